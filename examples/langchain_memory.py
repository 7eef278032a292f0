"""localmem with LangChain: a chat whose history lives in localmem, and a retriever that
brings a fact from an earlier conversation into the prompt, offline. A stand-in chat model
(LangChain's FakeListChatModel) takes the place of the LLM; swap in yours.

Each turn: ask the retriever for what the user's earlier chats say about the question,
put it in the system message, send the system message + the stored history + the new
question to the model, store the question and the reply with ``add_messages``. Then the
file is closed and opened again: the history is still there.

    python examples/langchain_memory.py              # with all-MiniLM-L6-v2 (found or downloaded once)
    python examples/langchain_memory.py --no-model   # no model: keyword retrieval only

Needs the langchain extra: pip install "localmem-engine[langchain]" (never "localmem": an
unrelated project).
"""

import sys
import tempfile
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from localmem import Memory
from localmem.integrations.langchain import (
    LocalmemChatMessageHistory,
    LocalmemRetriever,
)

OWNER = "maya"
INSTRUCTIONS = "You are Maya's travel assistant. Use what you remember when it helps."
EARLIER_CHAT = [  # another conversation, weeks ago
    HumanMessage("My sister Ana lives in Porto, near the Ribeira; she has a spare room."),
    AIMessage("Noted, thank you for telling me."),
]
USER_TURNS = [
    "I want to spend ten days in Portugal in May.",
    "Lisbon first, then the train north.",
    "Where could I stay in Porto for free?",
]
REPLIES = [  # what the stand-in model answers, in order
    "May is a lovely time for Portugal. Where would you like to start?",
    "Good plan: the train from Lisbon takes about three hours.",
    "You could stay with your sister Ana, near the Ribeira.",
]


def chat(mem: Memory, search: dict) -> None:
    earlier = LocalmemChatMessageHistory(mem, conversation_id="family", owner_id=OWNER)
    earlier.add_messages(EARLIER_CHAT)
    mem.flush()  # (with a model: wait for the vectors, so the demo is repeatable)

    history = LocalmemChatMessageHistory(mem, conversation_id="trip", owner_id=OWNER)
    # From every conversation of the owner, the message closest to the question.
    retriever = LocalmemRetriever(memory=mem, owner_id=OWNER, conversation_id="trip",
                                  strategy="cross_conversation", k=1, **search)
    model = FakeListChatModel(responses=REPLIES)
    for turn, text in enumerate(USER_TURNS, 1):
        docs = retriever.invoke(text)
        recalled = [f"- [{d.metadata['conversation_id']}] {d.page_content}" for d in docs]
        system = SystemMessage("\n".join([INSTRUCTIONS, "What you remember:", *recalled]))
        question = HumanMessage(text)
        prompt = [system, *history.messages, question]
        reply = model.invoke(prompt)
        history.add_messages([question, reply])
        mem.flush()
        print(f"turn {turn}: {len(prompt)} messages in the prompt; {text}")
        for line in recalled:
            print(f"  recalled {line[2:]}")
        print(f"  reply: {reply.content}")


def main(use_model: bool) -> None:
    options = {} if use_model else {"embed": "off"}
    search = {} if use_model else {"dense": False}  # no model: keyword search only
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "memory.db"
        with Memory(path, **options) as mem:
            chat(mem, search)

        with Memory(path, **options) as mem:  # a restart: the history is in the file
            history = LocalmemChatMessageHistory(mem, conversation_id="trip", owner_id=OWNER)
            kept = history.messages
            print(f"after reopening: {len(kept)} messages in 'trip': {' '.join(m.type for m in kept)}")
            print(f"  last: {kept[-1].content}")
            history.clear()
            family = LocalmemChatMessageHistory(mem, conversation_id="family", owner_id=OWNER)
            print(f"after clear(): {len(history.messages)} in 'trip', {len(family.messages)} in 'family'")


if __name__ == "__main__":
    main(use_model="--no-model" not in sys.argv[1:])
