"""What the two RPC transports (XML-RPC at /xmlrpc, SOAP at /soap) share: InterWorx's one
call, route(apikey, ctrl_name, action[, input]), from decoded parameters to a Request, and the
{status, payload} it answers, ready for either encoder. Each transport only decodes its bytes
into these parameters and encodes the reply.

The rules, the same for both (docs/interworx.md, "Calling it"):
- apikey: a string, or a struct/map holding `apikey` (extra members, such as `perms`, are
  ignored); session and email/password logins are refused with a 401 that says so.
- input: a struct/map of named inputs; nil, an EMPTY array and an empty string mean "no input"
  (PHP clients pass `array()` for actions without inputs, as InterWorx's documentation says,
  and PHP's ext/xmlrpc sends `null` as an empty string); anything else that is not a map is a
  400, as are names given twice.
- booleans: XML-RPC and SOAP carry a typed boolean, and PHP sends its `true`/`false` as one;
  such a boolean is taken as 1/0 for the 0/1 inputs (startOnBoot, cascade_to_nodes,
  dry_run) only (Request.booleans), never as a number elsewhere. JSON and forms stay strict.
- integers above 2**31-1 (XML-RPC's i4, SOAP's xsd:int) travel as decimal strings.
"""
from __future__ import annotations

from typing import Any, Callable

from imapd_ctl.core.errors import BadInput, Unauthorized
from imapd_ctl.core.request import Request, Result

PARAMS = ("apikey", "ctrl_name", "action", "input")
_I4 = 2**31 - 1


def key_of(apikey: Any) -> str | None:
    """The key from a string or {'apikey': ...}; other InterWorx auth forms are refused."""
    if isinstance(apikey, str):
        return apikey
    if isinstance(apikey, dict) and "apikey" in apikey:
        return apikey["apikey"] if isinstance(apikey["apikey"], str) else None
    if isinstance(apikey, dict) and apikey:
        raise Unauthorized("only API key authentication is supported: pass the key as a string "
                           "or as {'apikey': KEY} (session and email/password logins are not)")
    return None


def named_inputs(raw: Any) -> Any:
    """The input parameter as dispatch takes it: None for "no input" (nil, [], ""), else as is
    (dispatch refuses what is not a map, naming its type)."""
    if raw is None or (isinstance(raw, (list, str)) and not raw):
        return None
    return raw


def marshallable(value: Any) -> Any:
    """The payload with integers beyond 32 bits as decimal strings (memory limits above 2 GiB),
    which InterWorx clients and our own inputs accept."""
    if isinstance(value, int) and not isinstance(value, bool) and not -_I4 - 1 <= value <= _I4:
        return str(value)
    if isinstance(value, dict):
        return {k: marshallable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [marshallable(v) for v in value]
    return value


def route(transport: str, params: tuple[Any, ...], repeated: str | None, peer: str,
          dispatch: Callable[[Request], Result], method: str = "route") -> dict[str, Any]:
    """One call of route with its decoded positional parameters -> {status, payload}.
    `repeated`: the first input name the input map gave twice (reported after authentication,
    like any input error)."""
    if not 3 <= len(params) <= 4:
        return {"status": 400, "payload": f"{method} takes (apikey, ctrl_name, action[, input]); "
                                          f"got {len(params)} parameters"}
    apikey, ctrl_name, action = params[:3]

    def inputs() -> Any:
        if repeated is not None:
            raise BadInput(f"{repeated}: given more than once")
        return named_inputs(params[3] if len(params) == 4 else None)

    result = dispatch(Request(transport=transport, peer=peer, action=action, controller=ctrl_name,
                              read_key=lambda: key_of(apikey), read_inputs=inputs, booleans=True))
    return {"status": result.status, "payload": marshallable(result.payload)}
