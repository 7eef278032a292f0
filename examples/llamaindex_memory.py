"""localmem as the chat store of a LlamaIndex chat engine, offline.

A SimpleChatEngine keeps its history in a ChatMemoryBuffer backed by LocalmemChatStore,
so every turn is stored in the localmem file. LlamaIndex's MockLLM stands in for the LLM
(it answers "text text ..."); pass your own `llm=`. Then the file is opened again by a
new store and engine, which go on with the same conversation, and localmem's own
retrieval finds a fact from that conversation: the same file serves both.

Needs the `llamaindex` extra (pip install "localmem-engine[llamaindex]"; never "localmem", an unrelated project).

    python examples/llamaindex_memory.py              # with all-MiniLM-L6-v2 (found or downloaded once)
    python examples/llamaindex_memory.py --no-model   # no model: keyword retrieval only
"""

import sys
import tempfile
from pathlib import Path

from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import ChatMemoryBuffer

from localmem import Memory
from localmem.integrations.llamaindex import LocalmemChatStore

OWNER = "maya"
CHAT = "trip"
TURNS = [
    "I want to plan a trip to Portugal in May, about 10 days.",
    "My sister Ana lives in Porto, near the Ribeira; she has a spare room.",
    "Flights from Berlin to Lisbon cost 180 euros in May.",
]


def chat_engine(mem: Memory) -> SimpleChatEngine:
    """A chat engine whose history lives in ``mem``, conversation CHAT of OWNER."""
    store = LocalmemChatStore(mem, owner_id=OWNER)
    # tokenizer_fn: a word count is enough to trim the history, and needs no download.
    history = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=CHAT, token_limit=2000,
                                             tokenizer_fn=str.split)
    return SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=8), memory=history,
                                          system_prompt="You are Maya's travel assistant.")


def main(use_model: bool) -> None:
    options = {} if use_model else {"embed": "off"}
    search = {} if use_model else {"dense": False}  # no model: keyword search only
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "memory.db"
        with Memory(path, **options) as mem:
            engine = chat_engine(mem)
            for turn, text in enumerate(TURNS, 1):
                answer = engine.chat(text)
                print(f"turn {turn}: {text!r} -> {answer.response!r}")

        # A new process would do the same: open the file, build the store and engine again.
        with Memory(path, **options) as mem:
            engine = chat_engine(mem)
            history = engine.chat_history
            print(f"reopened: {len(history)} messages in {CHAT!r} of {OWNER!r}")
            for message in history:
                print(f"  {message.role.value}: {message.content}")
            engine.chat("Where could I stay in Porto?")
            print(f"after one more turn: {len(engine.chat_history)} messages")

            # localmem's own retrieval, over the conversation the chat engine stored.
            mem.flush()  # (the vectors of the new messages, when there is a model)
            result = mem.get_memory("auto", query="What did I tell you about my sister Ana?", conversation_id=CHAT,
                                    owner_id=OWNER, limit=3, **search)
            print(f"localmem get_memory(auto) ran {result.strategy.value}: {len(result.messages)} messages")
            for m in result.messages:
                print(f"  found: {m.role}: {m.content}")


if __name__ == "__main__":
    main(use_model="--no-model" not in sys.argv[1:])
