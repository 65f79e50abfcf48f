"""A FAKE WS-Management listener: just enough of WinRM's shell protocol for ``win_ping`` to succeed.

It runs nothing. It opens a pretend shell, accepts the pretend command and its stdin (Ansible's
PowerShell exec wrapper with the module inside), and answers ``{"changed": false, "ping": "pong"}``
when that module is ``win_ping``; any other module fails with a message saying that this is a fake.
Only the ``basic`` transport over HTTP is understood (no message encryption).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler

SOAP = "http://www.w3.org/2003/05/soap-envelope"
ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
DONE = f"{SHELL}/CommandState/Done"

PONG = {"changed": False, "ping": "pong"}
# Ansible's exec wrapper names the module it runs among the module's arguments, sent on stdin.
_MODULE_NAME = re.compile(rb'"_ansible_module_name": "([A-Za-z0-9_.]+)"')


def fake_module_result(stdin: bytes) -> dict[str, object]:
    """What the fake "runs": win_ping answers pong, everything else fails and says why."""
    names = {match.decode() for match in _MODULE_NAME.findall(stdin)}
    if names & {"win_ping", "ansible.windows.win_ping"}:
        return PONG
    return {
        "failed": True,
        "msg": "FAKE WinRM endpoint (tests/fake_windows): only win_ping is answered; no Windows host runs here",
    }


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:a="{ADDRESSING}" xmlns:w="{WSMAN}" xmlns:rsp="{SHELL}">'
        f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


class FakeWsmanHandler(BaseHTTPRequestHandler):
    """POST /wsman with basic auth; the server object carries ``fake_user``, ``fake_password``, ``fake_stdin``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows the playbook's output, not the fake's access log."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self._authorized():
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="FAKE WinRM"'})
            return
        root = ET.fromstring(body)
        action = root.findtext(f".//{{{ADDRESSING}}}Action", "")
        message_id = root.findtext(f".//{{{ADDRESSING}}}MessageID", "")
        self._send(200, self._answer(action.rsplit("/", 1)[-1], message_id, root))

    def _authorized(self) -> bool:
        expected = f"{self.server.fake_user}:{self.server.fake_password}".encode()  # type: ignore[attr-defined]
        return self.headers.get("Authorization", "") == f"Basic {base64.b64encode(expected).decode()}"

    def _answer(self, verb: str, message_id: str, root: ET.Element) -> bytes:
        action = f"{SHELL}/{verb}Response"
        stdin: dict[str, bytearray] = self.server.fake_stdin  # type: ignore[attr-defined]
        if verb == "Create":
            shell_id = str(uuid.uuid4()).upper()
            body = f'<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId></rsp:Shell><w:Selector Name="ShellId">{shell_id}</w:Selector>'
            return _envelope(action, message_id, body)
        if verb == "Command":
            command_id = str(uuid.uuid4()).upper()
            stdin[command_id] = bytearray()
            body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
            return _envelope(action, message_id, body)
        if verb == "Send":
            stream = root.find(f".//{{{SHELL}}}Stream")
            if stream is not None and stream.text:
                stdin.setdefault(stream.get("CommandId", ""), bytearray()).extend(
                    base64.b64decode(stream.text)
                )
            return _envelope(action, message_id, "<rsp:SendResponse/>")
        if verb == "Receive":
            desired = root.find(f".//{{{SHELL}}}DesiredStream")
            command_id = "" if desired is None else desired.get("CommandId", "")
            output = base64.b64encode(
                json.dumps(fake_module_result(bytes(stdin.pop(command_id, b"")))).encode()
            )
            body = (
                f'<rsp:ReceiveResponse><rsp:Stream Name="stdout" CommandId="{command_id}">{output.decode()}'
                f'</rsp:Stream><rsp:CommandState CommandId="{command_id}" State="{DONE}">'
                "<rsp:ExitCode>0</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>"
            )
            return _envelope(action, message_id, body)
        return _envelope(action, message_id, "")  # Signal, Delete: acknowledged

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
