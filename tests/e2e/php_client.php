<?php
// PHP's own API clients, driven by the e2e tests (tests/e2e/test_e2e_php.py), called exactly as
// the panels' InterWorx modules call them:
//   SOAP:    new SoapClient(WSDL URL), then ->route($apikey, $ctrl_name, $action, $input)
//   XML-RPC: ext/xmlrpc's xmlrpc_encode_request('iworx.route', [...]) POSTed, xmlrpc_decode()
//
//   php php_client.php < request.json
//   request: {"client": "soap"|"xmlrpc", "url": WSDL or XML-RPC URL, "version": "1.1"|"1.2" (SOAP),
//             "cafile": CA file (HTTPS, optional), "calls": [[apikey, ctrl_name, action, input], ...]}
//   prints a JSON list, one entry per call: {"is_array", "result"} or {"fault"}, and what went
//   over the wire ("request", "response"; SOAP: "request_headers").
$req = json_decode(stream_get_contents(STDIN), true, 64, JSON_THROW_ON_ERROR);
$ssl = isset($req['cafile'])   // HTTPS: verify the server against this CA (as ClientExec does)
    ? ['cafile' => $req['cafile'], 'verify_peer' => true, 'verify_peer_name' => true] : [];

function soap_calls(array $req, array $ssl): array {
    $client = new SoapClient($req['url'], [
        'soap_version' => $req['version'] === '1.2' ? SOAP_1_2 : SOAP_1_1,
        'trace' => true, 'exceptions' => true, 'cache_wsdl' => WSDL_CACHE_NONE,
        'connection_timeout' => 20, 'stream_context' => stream_context_create(['ssl' => $ssl])]);
    $out = [];
    foreach ($req['calls'] as [$key, $ctrl, $action, $input]) {
        try {
            $result = $client->route($key, $ctrl, $action, $input);
            $entry = ['is_array' => is_array($result), 'result' => $result];
        } catch (SoapFault $f) {
            $entry = ['fault' => $f->faultcode . ': ' . $f->getMessage()];
        }
        $entry['request'] = $client->__getLastRequest();
        $entry['request_headers'] = $client->__getLastRequestHeaders();
        $entry['response'] = $client->__getLastResponse();
        $out[] = $entry;
    }
    return $out;
}

function xmlrpc_calls(array $req, array $ssl): array {
    $out = [];
    foreach ($req['calls'] as $params) {
        $body = xmlrpc_encode_request('iworx.route', $params);
        $context = stream_context_create(['ssl' => $ssl, 'http' => [
            'method' => 'POST', 'header' => "Content-Type: text/xml\r\n", 'content' => $body,
            'timeout' => 20, 'ignore_errors' => true]]);
        $response = file_get_contents($req['url'], false, $context);
        $result = xmlrpc_decode($response);
        $entry = is_array($result) && xmlrpc_is_fault($result)
            ? ['fault' => $result['faultCode'] . ': ' . $result['faultString']]
            : ['is_array' => is_array($result), 'result' => $result];
        $entry['request'] = $body;
        $entry['response'] = $response;
        $out[] = $entry;
    }
    return $out;
}

$out = $req['client'] === 'soap' ? soap_calls($req, $ssl) : xmlrpc_calls($req, $ssl);
echo json_encode($out, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES), "\n";
