"""The MCP server (localmem/integrations/mcp.py), through the official SDK's own clients.

In-process (mcp.Client on the server object, a deterministic embedder): each tool's
schema, hints, answers and errors. Over stdio (``python -m localmem --db ... mcp``
spawned by the SDK's stdio_client, as a desktop client starts it): the same tools end
to end, malformed arguments, a client killed mid-call, and with the real model, that
``recall`` finds what ``remember`` stored in another conversation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlean
from hash_embedder import HashEmbedder
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from real_model import MODELS_DIR, needs_minilm

from localmem import Memory
from localmem.integrations._messages import CARRIER_FORMAT
from localmem.integrations.mcp import DEFAULT_CONVERSATION, Settings, build_server

TOOLS = {"remember", "recall", "recent", "build_context", "forget", "stats"}
READ_ONLY = {"recall", "recent", "build_context", "stats"}


@pytest.fixture
def memory(any_backend, tmp_path):
    with Memory(any_backend, embedder=HashEmbedder(), embed="sync", cache_dir=tmp_path / "cache") as mem:
        yield mem


def client(memory, owner="alice", conversation=DEFAULT_CONVERSATION):
    return Client(build_server(memory, Settings(owner, conversation)))


async def call(c, tool, **arguments):
    """The structured answer of a call that must succeed."""
    result = await c.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    # The same answer is also a JSON text block, for clients that read only text.
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


async def error(c, tool, **arguments):
    """The text of a call that must fail as a tool error (never a protocol error)."""
    result = await c.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text


# -- in-process ---------------------------------------------------------------------------


async def test_tools_have_schemas_descriptions_and_the_protocols_hints(memory):
    async with client(memory) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == TOOLS
    for name, tool in tools.items():
        hints = tool.annotations
        assert tool.description and len(tool.description) > 40, name
        assert hints.open_world_hint is False, name
        assert hints.read_only_hint is (name in READ_ONLY), name
        assert hints.destructive_hint is (name == "forget"), name
        assert tool.output_schema is not None, name  # structured answers, typed
        for field, schema in tool.input_schema["properties"].items():
            assert schema.get("description"), (name, field)
    assert tools["forget"].annotations.idempotent_hint is True
    assert tools["remember"].annotations.idempotent_hint is False
    recall = tools["recall"].input_schema
    assert recall["required"] == ["query"]
    assert recall["properties"]["scope"]["enum"] == ["auto", "conversation", "all_conversations"]
    assert (recall["properties"]["limit"]["minimum"], recall["properties"]["limit"]["maximum"]) == (1, 4096)
    assert tools["remember"].input_schema["properties"]["role"]["enum"] == ["user", "assistant", "system"]


async def test_remember_then_recent_recall_context_and_stats(memory):
    async with client(memory) as c:
        stored = await call(c, "remember", content="I love pizza napolitana", feature="preference")
        assert (stored["owner_id"], stored["conversation_id"], stored["role"]) == ("alice", "default", "user")
        assert memory.get(stored["msg_id"]).content == "I love pizza napolitana"
        await call(c, "remember", content="Noted: pizza napolitana", role="assistant")
        await call(c, "remember", content="my sister lives in Porto", conversation_id="trip")

        recent = await call(c, "recent")
        assert [m["content"] for m in recent["messages"]] == ["I love pizza napolitana", "Noted: pizza napolitana"]
        assert (await call(c, "recent", limit=1))["messages"][0]["role"] == "assistant"

        here = await call(c, "recall", query="pizza napolitana", scope="conversation")
        assert here["strategy"] == "semantic_search" and here["why"] is None
        assert {m["content"] for m in here["messages"]} == {"I love pizza napolitana", "Noted: pizza napolitana"}
        assert all(m["score"] is not None for m in here["messages"])
        everywhere = await call(c, "recall", query="sister Porto", scope="all_conversations", limit=1)
        assert everywhere["strategy"] == "cross_conversation"
        assert [m["content"] for m in everywhere["messages"]] == ["my sister lives in Porto"]
        auto = await call(c, "recall", query="where does my sister live?")
        assert auto["strategy"] in {"session_only", "recent_history", "semantic_search", "hybrid", "cross_conversation"}
        assert auto["why"]  # auto says why it chose

        ctx = await call(c, "build_context", max_tokens=200, instructions="Be brief.")
        assert ctx["system"].startswith("Be brief.")
        assert [t["content"] for t in ctx["turns"]] == ["I love pizza napolitana", "Noted: pizza napolitana"]
        assert 0 < ctx["tokens"]["total"] <= 200 == ctx["tokens"]["max_tokens"]
        assert "I love pizza napolitana" in ctx["text"]

        stats = await call(c, "stats")
        assert stats["owner_id"] == "alice" and stats["conversations"] == ["default", "trip"]
        assert stats["database"]["messages"] == 3 and stats["database"]["embedder"] == HashEmbedder.name


async def test_the_same_msg_id_again_is_a_no_op_and_other_text_under_it_an_error(memory):
    async with client(memory) as c:
        first = await call(c, "remember", content="likes tea", msg_id="fact-1", metadata={"source": "chat"})
        assert await call(c, "remember", content="likes tea", msg_id="fact-1", metadata={"source": "chat"}) == first
        assert "msg_id" in await error(c, "remember", content="likes coffee", msg_id="fact-1")
    assert memory.stats()["messages"] == 1


async def test_owner_comes_from_the_settings_and_cannot_be_switched(memory):
    memory.add("user", "bob's secret", conversation_id="default", owner_id="bob")
    async with client(memory, owner="alice") as c:
        assert "serves owner 'alice' only" in await error(c, "recall", query="secret", owner_id="bob")
        assert "serves owner 'alice' only" in await error(c, "remember", content="x", owner_id="bob")
        assert (await call(c, "recent"))["messages"] == []
        assert (await call(c, "recent", owner_id="alice"))["messages"] == []  # naming itself is fine
    async with client(memory, owner=None) as c:  # no owner set: every call names one
        assert "owner_id is required" in await error(c, "recent")
        assert [m["content"] for m in (await call(c, "recent", owner_id="bob"))["messages"]] == ["bob's secret"]


async def test_forget_one_message_a_conversation_or_everything(memory):
    memory.add("user", "bob keeps this", conversation_id="default", owner_id="bob")
    async with client(memory) as c:
        one = await call(c, "remember", content="delete me")
        await call(c, "remember", content="keep me")
        await call(c, "remember", content="old trip", conversation_id="trip",
                   msg_id="t-1")
        assert await call(c, "forget", msg_id=one["msg_id"]) == {"deleted": 1, "complete": True, "pending": []}
        assert memory.get(one["msg_id"]) is None
        assert (await call(c, "forget", msg_id=one["msg_id"]))["deleted"] == 0  # again: nothing, no error
        bobs = memory.messages(conversation_id="default", owner_id="bob")[0]
        assert (await call(c, "forget", msg_id=bobs.msg_id))["deleted"] == 0  # not alice's: untouched
        assert memory.get(bobs.msg_id) is not None

        for wrong in ({}, {"msg_id": "t-1", "conversation_id": "trip"}, {"conversation_id": "trip", "everything": True}):
            assert "exactly one" in await error(c, "forget", **wrong)
        assert "ISO 8601" in await error(c, "forget", conversation_id="trip", before="last week")
        assert "offset" in await error(c, "forget", conversation_id="trip", before="2020-01-01T00:00:00")
        past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
        assert (await call(c, "forget", conversation_id="trip", before=past))["deleted"] == 0
        gone = await call(c, "forget", conversation_id="trip")
        assert gone["deleted"] == 1
        if memory.path.startswith("postgresql://"):  # what PostgreSQL keeps, said (ForgetReport.pending)
            assert not gone["complete"] and [p[:11] for p in gone["pending"]] == ["PostgreSQL:"]
        else:
            assert gone["complete"] and gone["pending"] == []
        assert (await call(c, "forget", everything=True))["deleted"] == 1
        assert (await call(c, "stats"))["conversations"] == []
    assert memory.conversations("bob") == ("default",)


@pytest.mark.parametrize(("tool", "arguments", "says"), [
    ("remember", {}, "content"),                                   # missing
    ("remember", {"content": 5}, "content"),                       # wrong type
    ("remember", {"content": ""}, "content"),                      # below min_length
    ("remember", {"content": "  "}, "content must not be empty"),   # localmem's own check
    ("remember", {"content": "x", "role": "tool"}, "role"),
    ("remember", {"content": "x", "metadata": {"bad key!": 1}}, "metadata key"),
    ("remember", {"content": "x", "conversation_id": ""}, "conversation_id"),
    ("recall", {"query": "x", "limit": 0}, "limit"),
    ("recall", {"query": "x", "limit": "ten"}, "limit"),
    ("recall", {"query": "x", "scope": "everywhere"}, "scope"),
    ("recent", {"lookback_days": -1}, "lookback_days"),
    ("build_context", {"max_tokens": 5, "instructions": "a long system prompt " * 20}, "instructions"),
    ("nope", {}, "Unknown tool"),
])
async def test_malformed_arguments_are_tool_errors_and_the_server_goes_on(memory, tool, arguments, says):
    async with client(memory) as c:
        assert says in await error(c, tool, **arguments)
        assert (await call(c, "stats"))["owner_id"] == "alice"


async def test_an_unexpected_failure_is_a_tool_error_naming_it(memory, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(memory, "get_memory", broken)
    async with client(memory) as c:
        assert "internal error in recall: RuntimeError: disk on fire" in await error(c, "recall", query="x")
        assert (await call(c, "stats"))["database"]["messages"] == 0
    assert "disk on fire" in caplog.text  # with its traceback, for whoever reads the server's log


def test_settings_check_their_ids():
    with pytest.raises(ValueError, match="owner"):
        Settings(" ")
    with pytest.raises(ValueError, match="conversation"):
        Settings("alice", "")


# -- over stdio, as a desktop client runs it --------------------------------------------


@pytest.fixture
def models_dir(tiny_models, tmp_path):
    """A LOCALMEM_MODELS_DIR with the tiny test embedder under the name "tiny"."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny").symlink_to(tiny_models.embedder, target_is_directory=True)
    return folder


def server_params(db: Path, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    # The SDK's stdio_client passes on only HOME, PATH and a few others, as real clients
    # do: what the server needs comes through env, as in the README's configuration.
    return StdioServerParameters(
        command=sys.executable, args=["-m", "localmem", "--db", str(db), "mcp", *args],
        env={"HF_HUB_OFFLINE": "1", **(env or {})},
    )


async def test_over_stdio_every_tool_answers_and_errors_keep_the_server_up(tmp_path, models_dir):
    db = tmp_path / "desk.db"
    params = server_params(db, "--embedder", "tiny", env={"LOCALMEM_OWNER": "me", "LOCALMEM_MODELS_DIR": str(models_dir)})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        init = await s.initialize()
        assert init.server_info.name == "localmem"
        assert "recall" in init.instructions
        assert {t.name for t in (await s.list_tools()).tools} == TOOLS
        stored = (await s.call_tool("remember", {"content": "the wifi password is swordfish"})).structured_content
        assert (stored["owner_id"], stored["conversation_id"]) == ("me", "default")
        for tool, arguments in [("recent", {}), ("recall", {"query": "wifi password", "scope": "conversation"}),
                                ("recall", {"query": "wifi password"}), ("build_context", {"query": "wifi"}),
                                ("stats", {})]:
            result = await s.call_tool(tool, arguments)
            assert not result.is_error, (tool, result.content)
            assert "swordfish" in result.content[0].text or tool == "stats", tool
        bad = await s.call_tool("recall", {"query": 7, "limit": -1})
        assert bad.is_error and "limit" in bad.content[0].text
        assert (await s.call_tool("stats", {})).structured_content["database"]["messages"] == 1
        gone = await s.call_tool("forget", {"everything": True})
        assert gone.structured_content["deleted"] == 1
    with Memory(db, read_only=True) as mem:  # the server closed it cleanly
        assert mem.stats()["messages"] == 0 and mem.check_integrity() == "ok"


async def test_over_stdio_on_postgresql(postgres_url, tmp_path):
    """The deployment of many agents on many machines: each host's MCP server on one
    PostgreSQL database, named by LOCALMEM_DB as an MCP client's env would."""
    env = {"LOCALMEM_DB": postgres_url, "LOCALMEM_OWNER": "me", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "localmem", "mcp", "--keywords-only"],
                                   env={"HF_HUB_OFFLINE": "1", **env})
    for host in ("first", "second"):  # two servers in turn, as two machines would be
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            said = await s.call_tool("remember", {"content": f"the {host} host says the door code is 4417"})
            assert not said.is_error, said.content
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        found = await s.call_tool("recall", {"query": "door code", "scope": "conversation"})
        assert not found.is_error, found.content
        assert "first host" in found.content[0].text and "second host" in found.content[0].text
    with Memory(postgres_url, read_only=True, cache_dir=tmp_path / "reader") as mem:
        assert mem.stats()["messages"] == 2 and mem.check_integrity() == "ok"


class RawClient:
    """The server as a child process spoken to in raw JSON-RPC lines, below the SDK
    client: what a buggy or dying client may do."""

    def __init__(self, db: Path | None = None, server: subprocess.Popen | None = None) -> None:
        self.server = server or subprocess.Popen(
            [sys.executable, "-m", "localmem", "--db", str(db), "mcp", "--owner", "me", "--keywords-only"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        assert self.reply()["result"]["serverInfo"]["name"] == "localmem"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    @classmethod
    def attach(cls, server: subprocess.Popen) -> RawClient:
        """Speak to a server started some other way."""
        return cls(server=server)

    def send(self, message) -> None:
        self.server.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.server.stdin.flush()

    def call(self, request_id: int, tool: str, arguments) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                   "params": {"name": tool, "arguments": arguments}})

    def reply(self):
        return json.loads(self.server.stdout.readline())

    def end(self) -> tuple[int, str]:
        """Exit code and stderr once the server is gone (its pipes closed first)."""
        for pipe in (self.server.stdin, self.server.stdout):
            if not pipe.closed:
                pipe.close()
        code = self.server.wait(timeout=60)
        err = self.server.stderr.read()
        self.server.stderr.close()
        return code, err


def test_a_raw_line_that_is_not_json_and_arguments_that_are_not_an_object(tmp_path):
    raw = RawClient(tmp_path / "raw.db")
    raw.send("this is not json {")  # ignored
    raw.call(2, "remember", ["x"])
    answer = raw.reply()
    assert answer["id"] == 2 and "error" in answer  # a JSON-RPC error: arguments must be an object
    raw.call(3, "remember", {"content": "my sister lives in Porto", "conversation_id": "family"})
    answer = raw.reply()
    assert answer["id"] == 3 and answer["result"]["isError"] is False
    # --keywords-only: no model anywhere, and recall still finds it (by keywords).
    raw.call(4, "recall", {"query": "where does my sister live?"})
    found = raw.reply()["result"]["structuredContent"]
    assert [m["content"] for m in found["messages"]] == ["my sister lives in Porto"], found
    raw.server.stdin.close()  # the client closes: the server ends, with 0 and no traceback
    code, err = raw.end()
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("stdout_first", [False, True])
def test_a_client_gone_before_its_answer_is_written_ends_the_server_quietly(tmp_path, stdout_first):
    """Both pipes closed mid-call (a killed client); or its reading end first, so that the
    answer meets a broken pipe (without serve()'s care: a traceback and exit code 1)."""
    db = tmp_path / "gone.db"
    raw = RawClient(db)
    raw.call(2, "remember", {"content": "stored before"})
    assert raw.reply()["result"]["isError"] is False
    holder = sqlean.connect(str(db), isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")  # the next call waits for the write lock
    raw.call(3, "remember", {"content": "in flight"})
    time.sleep(0.5)
    raw.server.stdout.close()
    if not stdout_first:
        raw.server.stdin.close()
    holder.execute("ROLLBACK")
    holder.close()
    if stdout_first:  # the answer is written into the broken pipe before stdin ends
        with Memory(db, read_only=True) as mem:
            deadline = time.monotonic() + 60
            while mem.stats()["messages"] < 2:
                assert time.monotonic() < deadline, "the call in flight never finished"
                time.sleep(0.05)
        time.sleep(1.0)  # from the commit to the answer's write: microseconds
    code, err = raw.end()
    assert code == 0 and "Traceback" not in err, err
    if stdout_first:
        assert "the client went away" in err
    with Memory(db, read_only=True) as mem:
        assert [m.content for m in mem.messages(conversation_id="default", owner_id="me")] == ["stored before", "in flight"]


KILLED_CLIENT = textwrap.dedent("""
    import sys, anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    async def main():
        params = StdioServerParameters(command=sys.executable, args=sys.argv[1:],
                                       env={"HF_HUB_OFFLINE": "1", "LOCALMEM_OWNER": "me"})
        async with stdio_client(params, errlog=open(sys.argv[0] + ".server-err", "w")) as (r, w), \\
                ClientSession(r, w) as s:
            await s.initialize()
            await s.call_tool("remember", {"content": "stored before"})
            print("ready", flush=True)
            sys.stdin.readline()  # the test holds the write lock now
            print("calling", flush=True)
            await s.call_tool("remember", {"content": "in flight"})
            print("answered", flush=True)

    anyio.run(main)
""")


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _state(pid: int) -> str | None:
    """The process's state letter in /proc (None: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the server's pid in /proc (Linux)")
def test_a_client_killed_mid_call_leaves_the_server_to_finish_and_exit_quietly(tmp_path):
    db = tmp_path / "killed.db"
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT)
    client = subprocess.Popen(
        [sys.executable, str(script), "-m", "localmem", "--db", str(db), "mcp"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert client.stdout.readline() == "ready\n"
        [server_pid] = _children(client.pid)
        holder = sqlean.connect(str(db), isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # the next remember waits for this lock
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline() == "calling\n"
        time.sleep(0.5)  # the call is in the server now, waiting for the lock
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        holder.execute("ROLLBACK")
        holder.close()
        deadline = time.monotonic() + 60
        while _state(server_pid) not in (None, "Z"):  # Z: exited, not yet reaped by its new parent
            assert time.monotonic() < deadline, "the server outlived its client by 60 s"
            time.sleep(0.1)
    finally:
        if client.poll() is None:
            client.kill()
        client.stdout.close()
        client.stdin.close()
    err = Path(str(script) + ".server-err").read_text()
    assert "Traceback" not in err, err
    with Memory(db, read_only=True) as mem:
        contents = [m.content for m in mem.messages(conversation_id="default", owner_id="me")]
        assert mem.check_integrity() == "ok"
    # The call in flight finished (the write is durable) though nobody read its answer.
    assert contents == ["stored before", "in flight"]


@needs_minilm
async def test_with_the_real_model_recall_finds_a_fact_from_another_conversation(tmp_path):
    db = tmp_path / "real.db"
    env = {"LOCALMEM_OWNER": "maya", "LOCALMEM_MODELS_DIR": MODELS_DIR}
    async with stdio_client(server_params(db, env=env)) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        for text in ["My sister Ana lives in Porto, near the Ribeira.", "I am allergic to peanuts.",
                     "We watched a film about whales last night."]:
            await s.call_tool("remember", {"content": text, "conversation_id": "weeks-ago"})
        await s.call_tool("remember", {"content": "Let's plan the trip to Portugal in May.", "conversation_id": "today"})
        found = await s.call_tool("recall", {"query": "Where could I stay in Porto?", "conversation_id": "today",
                                             "scope": "all_conversations", "limit": 1})
        assert [m["content"] for m in found.structured_content["messages"]] == [
            "My sister Ana lives in Porto, near the Ribeira."
        ]
        auto = await s.call_tool("recall", {"query": "what food can't I eat?", "conversation_id": "today", "limit": 3})
        answer = auto.structured_content
        assert "I am allergic to peanuts." in [m["content"] for m in answer["messages"]], answer


def test_without_the_sdk_the_command_says_which_extra_to_install(run, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")] or ["mcp"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    monkeypatch.delitem(sys.modules, "localmem.integrations.mcp", raising=False)
    code, _, err = run("--db", str(tmp_path / "x.db"), "mcp", "--owner", "me")
    assert code == 1 and "pip install 'localmem-engine[mcp]'" in err
    assert not (tmp_path / "x.db").exists()


def _run_example(tmp_path, *args: str, env: dict[str, str] | None = None) -> str:
    example = Path(__file__).resolve().parent.parent / "examples" / "mcp_agent.py"
    done = subprocess.run(
        [sys.executable, str(example), *args], capture_output=True, text=True, encoding="utf-8",
        timeout=300, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path), **(env or {})}, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []  # it cleans up
    return done.stdout


def test_the_example_agent_without_a_model(tmp_path):
    out = _run_example(tmp_path, "--no-model", env={"LOCALMEM_MODELS_DIR": "", "HF_HUB_OFFLINE": "1"})
    assert out.count("tools build_context, forget, recall, recent, remember, stats") == 2
    assert out.count("  remember -> ") == 3
    # Keywords alone: "Porto" is found (looking wider), food/peanuts shares no word.
    assert "assistant: From what you told me: My sister Ana lives in Porto" in out
    assert "user: Is there any food I must avoid?\n" in out and out.count("I do not know yet.") == 1
    assert "stats: conversations ['today', 'weeks-ago'], messages 7" in out
    assert "forget weeks-ago: deleted 3, complete True" in out
    assert "recall after forget: 0 from weeks-ago" in out


@needs_minilm
def test_the_example_agent_with_the_real_model(tmp_path):
    out = _run_example(tmp_path, env={"LOCALMEM_MODELS_DIR": MODELS_DIR, "HF_HUB_OFFLINE": "1"})
    assert "recall -> strategy cross_conversation" in out  # auto looked in the earlier chat
    assert "assistant: From what you told me: My sister Ana lives in Porto" in out
    assert "assistant: From what you told me: I am allergic to peanuts." in out
    assert "I do not know yet." not in out
    assert "recall after forget: 0 from weeks-ago" in out


async def test_a_msg_id_of_another_owner_is_taken_without_saying_whose(memory):
    memory.add("user", "bob's", conversation_id="default", owner_id="bob", msg_id="hr-1")
    async with client(memory) as c:
        said = await error(c, "remember", content="mine", msg_id="hr-1")
        assert "taken" in said and "bob" not in said and "fields" not in said
        assert (await call(c, "remember", content="mine", msg_id="hr-2"))["msg_id"] == "hr-2"


async def test_a_missing_model_is_a_tool_error_that_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with Memory(tmp_path / "m.db", embedder="not-a-model-anywhere") as mem:
        async with client(mem) as c:
            await call(c, "remember", content="kept while the model is missing")
            said = await error(c, "recall", query="kept", scope="conversation")
            assert "not-a-model-anywhere" in said and "--keywords-only" in said
            assert len((await call(c, "recent"))["messages"]) == 1


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists(),
                    reason="root ignores file modes; needs setpriv (util-linux) to run the server as nobody")
def test_a_file_it_cannot_write_is_served_read_only(tmp_path):
    folder = Path(tempfile.mkdtemp())  # not under pytest's folder, which only root may enter
    db = folder / "ro.db"
    with Memory(db, embed="off") as mem:
        mem.add("user", "written before", conversation_id="default", owner_id="me")
    db.chmod(0o444)
    folder.chmod(0o555)
    command = [sys.executable, "-m", "localmem", "--db", str(db), "mcp", "--owner", "me", "--keywords-only"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    try:
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(folder)})
        raw = RawClient.attach(server)
        raw.call(2, "recent", {})
        assert [m["content"] for m in raw.reply()["result"]["structuredContent"]["messages"]] == ["written before"]
        raw.call(3, "remember", {"content": "new"})
        answer = raw.reply()["result"]
        assert answer["isError"] and "read" in answer["content"][0]["text"].lower()
        code, err = raw.end()
        assert code == 0 and "serving it read-only" in err, err
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


async def test_remember_refuses_a_forged_chat_adapter_carrier(memory):
    forged = json.dumps({"format": CARRIER_FORMAT, "message": {"type": "bogus", "data": {}}})
    async with client(memory) as c:
        assert "carrier" in await error(c, "remember", content="x", metadata={"langchain": forged})
        await call(c, "remember", content="x", metadata={"langchain": "1.0"})  # a plain tag is fine
    assert memory.stats()["messages"] == 1


@pytest.mark.parametrize(("where", "says"), [("missing/x.db", "does not exist"), (".", "is a folder")])
def test_a_path_that_cannot_be_a_database_says_why(run, tmp_path, where, says):
    code, _, err = run("--db", str(tmp_path / where), "mcp", "--owner", "me")
    assert code == 1 and says in err
