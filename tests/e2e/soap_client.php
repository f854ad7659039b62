<?php
// PHP's own SoapClient, driven by the e2e tests (tests/e2e/test_e2e_soap.py), called exactly as
// the panels' InterWorx modules call it: new SoapClient(WSDL URL), then ->route(...).
//
//   php soap_client.php < request.json
//   request: {"wsdl": URL, "version": "1.1"|"1.2", "calls": [[apikey, ctrl_name, action, input], ...]}
//   prints a JSON list, one entry per call: {"is_array", "result"} or {"fault"}, and the
//   envelopes exchanged ("request", "response") and the request's HTTP headers.
$req = json_decode(stream_get_contents(STDIN), true, 64, JSON_THROW_ON_ERROR);
$options = ['soap_version' => $req['version'] === '1.2' ? SOAP_1_2 : SOAP_1_1,
            'trace' => true, 'exceptions' => true, 'cache_wsdl' => WSDL_CACHE_NONE,
            'connection_timeout' => 20];
if (isset($req['cafile'])) {   // HTTPS: verify the server against this CA (as ClientExec does)
    $options['stream_context'] = stream_context_create(['ssl' => [
        'cafile' => $req['cafile'], 'verify_peer' => true, 'verify_peer_name' => true]]);
}
$client = new SoapClient($req['wsdl'], $options);
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
echo json_encode($out, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES), "\n";
