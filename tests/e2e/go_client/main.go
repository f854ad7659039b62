// A Go InterWorx API client, driven by the e2e tests (tests/e2e/test_e2e_go.py), calling as Go
// integrations do (jakdept/iworxApi): github.com/kolo/xmlrpc's client over an http.Transport that
// skips certificate verification, route(auth, ctrl_name, action, input) with auth the map
// {"apikey": APIKEY}.
//
//	go_client URL APIKEY CTRL_NAME ACTION < input.json
//
// input.json becomes the Go value a Go program would pass: an object a map[string]interface{},
// an array a []interface{} (so [] is an empty slice: no input), integers Go ints, strings,
// booleans and null as they are. Prints one JSON object: {"is_array": the reply decoded to a Go
// map, "result": the reply, "request": the XML-RPC body sent} or, when the call fails,
// {"fault": the error, "request": ...}.
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/kolo/xmlrpc"
)

// recorder keeps the request body the client sends, then sends it unchanged.
type recorder struct {
	next http.RoundTripper
	body []byte
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	r.body = body
	req.Body = io.NopCloser(bytes.NewReader(body))
	return r.next.RoundTrip(req)
}

// goValue turns decoded JSON (numbers as json.Number) into the values a Go caller builds.
func goValue(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case json.Number:
		n, err := t.Int64()
		return int(n), err
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, e := range t {
			g, err := goValue(e)
			if err != nil {
				return nil, err
			}
			m[k] = g
		}
		return m, nil
	case []interface{}:
		s := make([]interface{}, 0, len(t))
		for _, e := range t {
			g, err := goValue(e)
			if err != nil {
				return nil, err
			}
			s = append(s, g)
		}
		return s, nil
	}
	return v, nil
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: go_client URL APIKEY CTRL_NAME ACTION < input.json")
		os.Exit(2)
	}
	url, key, ctrl, action := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	dec := json.NewDecoder(os.Stdin)
	dec.UseNumber()
	var raw interface{}
	if err := dec.Decode(&raw); err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(2)
	}
	input, err := goValue(raw)
	if err != nil {
		fmt.Fprintln(os.Stderr, "input:", err)
		os.Exit(2)
	}

	rec := &recorder{next: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	client, err := xmlrpc.NewClient(url, rec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer client.Close()
	var reply interface{}
	out := map[string]interface{}{}
	if err := client.Call("iworx.route", []interface{}{map[string]string{"apikey": key}, ctrl, action, input}, &reply); err != nil {
		out["fault"] = err.Error()
	} else {
		_, isMap := reply.(map[string]interface{})
		out["is_array"], out["result"] = isMap, reply
	}
	out["request"] = string(rec.body)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
