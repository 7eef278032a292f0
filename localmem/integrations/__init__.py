"""localmem behind the interfaces agent frameworks expect (optional extras).

- ``localmem.integrations.mcp``: a Model Context Protocol server (``localmem mcp``;
  extra ``mcp``).
- ``localmem.integrations.langchain``: a LangChain chat message history and retriever
  (extra ``langchain``).
- ``localmem.integrations.llamaindex``: a LlamaIndex chat store (extra ``llamaindex``).

Each module imports its framework when it is imported, never before: ``import localmem``
pulls in none of them.
"""
