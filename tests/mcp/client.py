"""An MCP client for pipelock-agent's tests, built on the official `mcp`
Python SDK (streamable HTTP): initialises a session at URL, then runs the
steps given as a JSON list, printing one JSON line per step:
  ["list"]                      -> {"step":"list","tools":[names],"descriptions":{...}}
  ["call", name, {arguments}]   -> {"step":"call","text":...} or {"step":"call","error":{code,message}}
Headers (e.g. Authorization) come from $MCP_HEADERS (a JSON object).
Usage: client.py URL STEPS_JSON
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url, steps):
    headers = json.loads(os.environ.get("MCP_HEADERS", "{}"))
    async with streamablehttp_client(url, headers=headers, timeout=20) as (read, write, session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(json.dumps({"step": "initialize", "server": init.serverInfo.name,
                              "session": bool(session_id())}), flush=True)
            for step in steps:
                kind = step[0]
                try:
                    if kind == "list":
                        res = await session.list_tools()
                        print(json.dumps({"step": "list", "tools": [t.name for t in res.tools],
                                          "descriptions": {t.name: t.description for t in res.tools}}),
                              flush=True)
                    elif kind == "call":
                        res = await session.call_tool(step[1], step[2])
                        text = "".join(c.text for c in res.content if getattr(c, "text", None))
                        print(json.dumps({"step": "call", "tool": step[1], "text": text,
                                          "is_error": res.isError}), flush=True)
                except McpError as e:
                    print(json.dumps({"step": kind, "error": {"code": e.error.code,
                                                              "message": e.error.message}}),
                          flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
