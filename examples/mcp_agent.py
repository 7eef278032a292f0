"""localmem over MCP: an agent that remembers across sessions through `localmem mcp`,
offline. The agent talks to the server with the official MCP SDK's stdio client, as a
desktop client does; a stand-in "LLM" (a few rules) decides which tool to call, where a
real model would read the tools' descriptions and decide.

Session 1 (one server process): the user says things worth keeping; the agent calls
`remember`. Session 2 (a new server process on the same file, another conversation): the
user asks; the agent calls `recall` (auto; wider if that finds nothing) and answers
from what it finds, keeping the chat's turns with `remember`; then `build_context` and
`stats`. Last, `forget` removes the first conversation for good.

    python examples/mcp_agent.py              # with all-MiniLM-L6-v2 (found or downloaded once)
    python examples/mcp_agent.py --no-model   # no model: the server runs --keywords-only

Needs the mcp extra: pip install "localmem-engine[mcp]" (never "localmem": an unrelated project).
"""

import os
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

OWNER = "maya"
SESSION_1 = [
    "My sister Ana lives in Porto, near the Ribeira; she has a spare room.",
    "I am allergic to peanuts.",
    "Lately I have been reading about whales.",
]
SESSION_2 = [
    "Where could I stay in Porto for free?",
    "Is there any food I must avoid?",
]


def stand_in_llm(user_text: str) -> tuple[str, dict]:
    """The tool call a model might choose: a question is looked up, a statement kept."""
    if user_text.rstrip().endswith("?"):
        return "recall", {"query": user_text, "limit": 2}
    return "remember", {"content": user_text, "role": "user", "feature": "fact"}


def server(db: Path, conversation: str, keywords_only: bool) -> StdioServerParameters:
    args = ["-m", "localmem", "--db", str(db), "mcp", "--owner", OWNER, "--conversation", conversation]
    if keywords_only:
        args.append("--keywords-only")
    # An MCP client starts the server with almost no environment: pass what it needs.
    env = {name: os.environ[name] for name in ("LOCALMEM_MODELS_DIR", "HF_HUB_OFFLINE", "HF_HOME") if name in os.environ}
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def call(mcp: ClientSession, tool: str, arguments: dict) -> dict:
    result = await mcp.call_tool(tool, arguments)
    if result.is_error:
        raise SystemExit(f"{tool} failed: {result.content[0].text}")
    return result.structured_content


async def session(db: Path, conversation: str, turns: list[str], keywords_only: bool, *, last: bool) -> None:
    async with stdio_client(server(db, conversation, keywords_only)) as (read, write), \
            ClientSession(read, write) as mcp:
        await mcp.initialize()
        tools = (await mcp.list_tools()).tools
        print(f"-- session in {conversation!r}: tools", ", ".join(sorted(t.name for t in tools)))
        for text in turns:
            tool, arguments = stand_in_llm(text)
            answer = await call(mcp, tool, arguments)
            print(f"user: {text}")
            if tool == "remember":
                print(f"  remember -> {answer['msg_id']} in {answer['conversation_id']}")
                continue
            # Messages found by searching have a score; recent turns (auto may choose them) do not.
            found = [m for m in answer["messages"] if m["score"] is not None]
            print(f"  recall -> strategy {answer['strategy']}, {len(found)} found by search")
            if not found:  # as a model would: look wider before giving up
                answer = await call(mcp, "recall", {**arguments, "scope": "all_conversations"})
                found = answer["messages"]
                print(f"  recall all_conversations -> {len(found)} found")
            reply = "From what you told me: " + found[0]["content"] if found else "I do not know yet."
            print(f"assistant: {reply}")
            # The chat itself is kept too, so that build_context has its turns.
            await call(mcp, "remember", {"content": text, "role": "user"})
            await call(mcp, "remember", {"content": reply, "role": "assistant"})
        if not last:
            return
        ctx = await call(mcp, "build_context", {"query": "a place to stay in Porto", "max_tokens": 300})
        print(f"build_context: {len(ctx['turns'])} turns, {ctx['tokens']['total']} of "
              f"{ctx['tokens']['max_tokens']} tokens, history by {ctx['strategy']}")
        stats = await call(mcp, "stats", {})
        print(f"stats: conversations {stats['conversations']}, messages {stats['database']['messages']}")
        gone = await call(mcp, "forget", {"conversation_id": "weeks-ago"})
        print(f"forget weeks-ago: deleted {gone['deleted']}, complete {gone['complete']}")
        again = await call(mcp, "recall", {"query": "Ana's spare room", "scope": "all_conversations"})
        left = [m for m in again["messages"] if m["conversation_id"] == "weeks-ago"]
        print(f"recall after forget: {len(left)} from weeks-ago")


async def main(keywords_only: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "memory.db"
        await session(db, "weeks-ago", SESSION_1, keywords_only, last=False)
        await session(db, "today", SESSION_2, keywords_only, last=True)


if __name__ == "__main__":
    anyio.run(main, "--no-model" in sys.argv[1:])
