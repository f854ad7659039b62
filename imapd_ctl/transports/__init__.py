"""The edges that carry calls: each transport turns bytes into a core.request.Request and a
Result back into bytes (HTTP JSON, XML-RPC, SOAP); the Flask app factory; OpenAPI and docs from the
action table. (The words of outcomes and errors are operations.prose.)"""
