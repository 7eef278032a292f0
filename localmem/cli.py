"""The ``localmem`` command: ``demo``, ``add``, ``recent``, ``search``, ``context``, ``mcp``, ``info``, ``export``, ``import``, ``migrate``, ``models``...

Exit codes: 0 success, 1 a localmem error (printed as ``localmem: error: ...``), 2 a usage
error (argparse's own).

Reading never creates or changes a file: ``info``, ``recent``, ``stats`` and ``metrics``
always open the database with ``read_only=True``, so they work on read-only media and
without write permission. ``search`` and ``context`` first bring what ``add`` leaves
queued up to date (the vectors of new messages; the summary), which is a write: they do
so when the file can be written, and otherwise read it as it is, read-only, saying on
stderr what that leaves out. (No ``--read-only`` option: a read never needs one.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any

from . import progress
from ._version import __version__
from .backend import describe_model, is_postgres_url
from .demo import run_demo
from .driver import can_write
from .errors import InvalidInputError, LocalMemError
from .lifecycle import RetentionPolicy
from .memory import DEFAULT_MEMORY_SHARE, Memory, default_path
from .models import (
    DEFAULT_EMBEDDER,
    DEFAULT_RERANKER,
    REGISTRY,
    file_sha256,
    int8_path,
    quantize,
    resolve,
)
from .progress import bar
from .records import MemoryResult, Message, Strategy
from .validate import ROLES, parse_time


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds")


def _message_json(m: Message) -> dict[str, Any]:
    return {**asdict(m), "created_at": m.created_at.isoformat()}


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _db_path(args: argparse.Namespace, *, create: bool = True) -> str:
    """--db, else $LOCALMEM_DB, else the default file (``create``: its folder is made if
    missing); a leading ``~`` is the home folder. ``demo`` reads only --db: the tour never
    writes into the user's memory."""
    # "~" expanded here too: MCP clients start commands without a shell.
    named = str(args.db) if args.db is not None else os.environ.get("LOCALMEM_DB")
    if named and is_postgres_url(named):
        return named
    return os.path.expanduser(named) if named else os.fspath(default_path(create=create))


def _open_existing(args: argparse.Namespace, **options: Any) -> Memory:
    """Open a database that must already exist: reading never creates a file."""
    path = _db_path(args, create=False)
    if path != ":memory:" and not is_postgres_url(path) and not os.path.exists(path):
        raise LocalMemError(
            f"no database at {path} (nothing was created); "
            "'localmem add' or 'localmem demo --db PATH' creates one"
        )
    return Memory(path, **options)


def _note(text: str) -> None:
    print(f"localmem: note: {text}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    """The tour (localmem/demo.py): a few weeks of chats, then what each strategy finds."""
    return run_demo(args.db)


def _read_text(text: str) -> str:
    """TEXT, or stdin (UTF-8, trailing newlines dropped) when TEXT is ``-``."""
    if text != "-":
        return text
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return sys.stdin.read().rstrip("\r\n")
    try:
        return stream.read().decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"stdin is not valid UTF-8 (byte {exc.start})") from None


def cmd_add(args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--metadata is not valid JSON: {exc}") from None
    content = _read_text(args.text)
    # embed="off": the message is queued for its vector, computed by the next Memory that
    # embeds (localmem search, or the agent's own); a one-shot command exits too soon.
    with Memory(_db_path(args), embed="off") as mem:
        m = mem.add(
            args.role, content, conversation_id=args.conversation, owner_id=args.owner,
            feature=args.feature, msg_id=args.msg_id, metadata=metadata,
        )
    if args.json:
        _print_json(_message_json(m))
    else:
        print(f"{m.msg_id}  {_iso(m.created_at)}")
    return 0


def cmd_recent(args: argparse.Namespace) -> int:
    lookback = None if args.all else args.lookback_days
    # A look from the command line, not an agent's call: not in the strategy log.
    with _open_existing(args, read_only=True, embed="off", strategy_log=False) as mem:
        result = mem.get_memory(
            Strategy.RECENT_HISTORY, conversation_id=args.conversation, owner_id=args.owner,
            limit=args.limit, lookback_days=lookback,
        )
    if args.json:
        _print_json(_result_json(result))
        return 0
    for m in result.messages:
        print(f"{_iso(m.created_at)}  [{m.role}] {m.content}")
    print(result.context_summary)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """The strategy log's report (reading it creates nothing)."""
    days = None if args.days is None or args.days == 0 else args.days
    with _open_existing(args, read_only=True, embed="off") as mem:
        stats = mem.strategy_stats(owner_id=args.owner, days=days)
    if args.json:
        _print_json(stats.as_dict())
        return 0
    who = "all owners" if stats.owner_id is None else f"owner {stats.owner_id}"
    period = "all time" if stats.days is None else f"last {stats.days:g} days"
    if not stats.total_calls:
        print(f"no get_memory calls logged ({who}, {period})")
        return 0
    print(f"{stats.total_calls} get_memory calls, {who}, {period}: latency p50 {stats.latency_p50_ms:.2f} ms, "
          f"p95 {stats.latency_p95_ms:.2f} ms, cache hits {stats.cache_hit_rate:.0%}, chosen by auto {stats.auto_share:.0%}")
    if stats.strategies:
        print(f"\n{'strategy':20}{'calls':>8}{'share':>8}{'p50 ms':>9}{'p95 ms':>9}{'avg ms':>9}"
              f"{'results':>9}{'cache':>7}{'auto':>7}")
        for u in stats.strategies:
            print(f"{u.strategy:20}{u.calls:8d}{u.share:8.0%}{u.latency_p50_ms:9.2f}{u.latency_p95_ms:9.2f}"
                  f"{u.latency_avg_ms:9.2f}{u.avg_results:9.1f}{u.cache_hit_rate:7.0%}{u.auto_share:7.0%}")
    if stats.auto_reasons:
        print("\nwhy auto chose: " + ", ".join(f"{reason} {calls}" for reason, calls in stats.auto_reasons))
    return 0


def _result_json(result: MemoryResult) -> dict[str, Any]:
    selection = None if result.selection is None else {**asdict(result.selection),
                                                        "strategy": result.selection.strategy.value}
    return {
        "strategy": result.strategy.value,
        "selection": selection,
        "cache_hit": result.cache_hit,
        "context_summary": result.context_summary,
        "latency_ms": result.latency_ms,
        "messages": [_message_json(m) for m in result.messages],
    }


def _setting(value: str, name: str, *, auto: bool) -> float | str | None:
    """A --min-relevance / --rerank-threshold value: a number, "none", or "auto"."""
    if value == "none":
        return None
    if value == "auto" and auto:
        return value
    try:
        return float(value)
    except ValueError:
        words = '"none", "auto"' if auto else '"none"'
        raise InvalidInputError(f"{name} must be a number or {words}; got {value!r}") from None


def cmd_search(args: argparse.Namespace) -> int:
    lookback = None if args.all else args.lookback_days
    options: dict[str, Any] = {} if args.embedder is None else {"embedder": args.embedder}
    if args.reranker is not None:
        from .rerank import load_reranker

        folder = os.path.isdir(args.reranker)
        options["reranker"] = load_reranker(path=args.reranker) if folder else args.reranker
    ask: dict[str, Any] = {
        "conversation_id": args.conversation, "owner_id": args.owner, "query": args.query,
        "limit": args.limit, "lookback_days": lookback, "keyword": not args.dense_only,
    }
    if args.min_relevance is not None:
        ask["min_relevance"] = _setting(args.min_relevance, "--min-relevance", auto=True)
    if args.rerank_threshold is not None:
        ask["rerank_threshold"] = _setting(args.rerank_threshold, "--rerank-threshold", auto=False)
    path = _db_path(args, create=False)
    writable = path == ":memory:" or is_postgres_url(path) or can_write(path)
    with _open_existing(args, strategy_log=False, read_only=not writable, **options) as mem:  # a look
        if writable:
            mem.flush()  # messages added by `localmem add` get their vectors first
        elif (pending := mem.stats()["pending_vectors"]):
            _note(f"{path} cannot be written here, so {pending} message(s) still waiting for a "
                  "vector are found by keywords only")
        if args.explain:
            print(mem.explain(args.strategy, **ask).render(), end="")
            return 0
        result = mem.get_memory(args.strategy, **ask)
    if args.json:
        _print_json(_result_json(result))
        return 0
    for m in result.messages:
        score = "" if m.score is None else f"{m.score:.4f}"
        print(f"{score:>8}  {_iso(m.created_at)}  {m.conversation_id}  [{m.role}] {m.content}")
    print(result.context_summary)
    if result.selection is not None:
        print(f"auto chose {result.strategy.value} ({result.selection.reason}): {result.selection.detail}")
    return 0


def cmd_context(args: argparse.Namespace) -> int:
    # The recency strategies need no model: open without one, so they work offline.
    recency = args.strategy in (Strategy.SESSION_ONLY.value, Strategy.RECENT_HISTORY.value)
    options: dict[str, Any] = {"embed": "off"} if recency else {}
    path = _db_path(args, create=False)
    writable = path == ":memory:" or is_postgres_url(path) or can_write(path)
    with _open_existing(args, strategy_log=False, read_only=not writable, **options) as mem:  # a look
        if writable:
            if not recency:
                mem.flush()  # vectors of messages added by `localmem add` first
            # The summary up to date now: `localmem add` exits before its worker would fold.
            mem.fold_summary(conversation_id=args.conversation, owner_id=args.owner)
        ctx = mem.build_context(
            conversation_id=args.conversation, owner_id=args.owner, query=args.query,
            max_tokens=args.max_tokens, strategy=args.strategy, instructions=args.instructions,
            memory_share=args.memory_share, history_limit=args.history_limit,
            lookback_days=args.lookback_days,
        )
    if not writable and any(d.reason == "not_summarized" for d in ctx.dropped):
        _note(f"{path} cannot be written here, so the summary is shown as stored: older messages "
              "not yet folded into it are left out")
    if args.format == "openai":
        _print_json(ctx.to_openai())
    elif args.format == "anthropic":
        _print_json(ctx.to_anthropic())
    else:
        print(ctx.to_text())
        t = ctx.tokens
        print(f"\n-- {t.total} of {t.max_tokens} tokens: system {t.system} (summary {t.summary}, "
              f"history {t.history}), turns {t.turns} ({len(ctx.turns)}); {len(ctx.dropped)} left out or cut"
              + ("" if ctx.strategy is None else f"; history by {ctx.strategy.value}"))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve over stdio (localmem/integrations/mcp.py) until the client goes away."""
    try:
        from .integrations.mcp import serve
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in ("mcp", "pydantic"):
            raise
        raise LocalMemError(
            "the MCP server needs the MCP SDK: pip install 'localmem-engine[mcp]'"
        ) from exc
    options: dict[str, Any] = {} if args.embedder is None else {"embedder": args.embedder}
    return serve(_db_path(args), owner_id=args.owner, conversation_id=args.conversation,
                 keywords_only=args.keywords_only, **options)


def cmd_reembed(args: argparse.Namespace) -> int:
    """Rebuild every vector with the given embedder (or the recorded one)."""
    path = _db_path(args)
    with _open_existing(args, read_only=True, embed="off") as mem:
        recorded = mem.stats()["embedder"]
    if args.embedder is not None and (recorded is None or recorded.get("name") != args.embedder):
        mem = Memory(path, embedder=args.embedder, reembed=recorded is not None)
        queued = mem.stats()["pending_vectors"]
    else:
        mem = Memory(path, embedder=args.embedder)
        queued = mem.reembed()
    with mem:
        name = args.embedder or (recorded or {}).get("name") or DEFAULT_EMBEDDER
        print(f"re-embedding {queued} messages with {name}")
        started = time.perf_counter()
        mem.flush(progress=progress.bar())
        stats = mem.stats()
    print(f"done: {stats['vectors']} vectors in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Delete an owner's, a conversation's or older messages, leaving no byte of them."""
    if args.conversation is not None and args.owner is None:
        raise InvalidInputError("--conversation needs --owner")
    before = parse_time(args.before, "--before")
    with _open_existing(args, embed="off") as mem:
        report = mem.forget(owner_id=args.owner, conversation_id=args.conversation, before=before)
    _print_json(asdict(report))
    return 0 if report.complete else 1


def cmd_maintain(args: argparse.Namespace) -> int:
    """Expired cache entries, retention, index merge, checkpoint, space, integrity."""
    retention = None
    if args.max_age_days is not None:
        retention = RetentionPolicy(max_age_days=args.max_age_days, archive=args.archive)
    elif args.archive is not None:
        raise InvalidInputError("--archive needs --max-age-days")
    with _open_existing(args, embed="off", retention=retention) as mem:
        report = mem.maintain(vacuum=args.vacuum, integrity=not args.no_integrity, progress=progress.bar())
    if args.json:
        _print_json(asdict(report))
    else:
        for step in report.steps:
            print(f"{step.name:14} {step.seconds:8.3f} s  {step.detail}")
        print(f"{'total':14} {report.seconds:8.3f} s  {_mb(report.bytes_before)} -> {_mb(report.bytes_after)}")
        for line in report.pending:
            print(f"pending: {line}")
    return 0 if report.complete and report.integrity in (None, "ok") else 1


def cmd_metrics(args: argparse.Namespace) -> int:
    """What a Prometheus scrape would show, for a database no process here has open."""
    from .metrics import exposition

    with _open_existing(args, read_only=True, embed="off", strategy_log=False) as mem:
        print(exposition(mem.active_conversations), end="")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    # Read-only: works on read-only media, creates and changes nothing.
    with _open_existing(args, read_only=True, embed="off", strategy_log=False) as mem:
        stats = mem.stats()
    if args.json:
        _print_json(stats)
        return 0
    stats["bytes"] = f"{stats['bytes']} bytes"
    stats["embedder"] = describe_model(stats["embedder"]) if stats["embedder"] else "none yet"
    for key, value in stats.items():
        print(f"{'size' if key == 'bytes' else key:<14}  {value}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write messages to a file (reading the database creates nothing beside it)."""
    before = parse_time(args.before, "--before")
    with _open_existing(args, read_only=True, embed="off", strategy_log=False) as mem:
        try:
            report = mem.export(
                args.path, owner_id=args.owner, conversation_id=args.conversation, before=before,
                vectors=args.vectors, format=args.format, overwrite=args.overwrite, progress=bar(),
            )
        except OSError as exc:
            raise LocalMemError(f"cannot write {args.path}: {exc}") from exc
    _print_json(asdict(report))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Store an export file's messages (creates the database if needed). Vectors the file
    carries are stored; the other messages wait for the next Memory that embeds (a
    one-shot command exits too soon to embed them)."""
    with Memory(_db_path(args), embed="off") as mem:
        try:
            report = mem.import_(args.path, skip_invalid=args.skip_invalid, progress=bar())
        except OSError as exc:
            raise LocalMemError(f"cannot read {args.path}: {exc}") from exc
    _print_json(asdict(report))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy a database into another (a file into PostgreSQL), vectors included, then check
    the copy; exit 1 when the check found a problem (localmem/migrate.py)."""
    from .migrate import migrate

    source = args.source if is_postgres_url(args.source) else os.path.expanduser(args.source)
    if not is_postgres_url(source) and not os.path.exists(source):
        raise LocalMemError(f"no database at {source}")
    target = args.target if is_postgres_url(args.target) else os.path.expanduser(args.target)
    report = migrate(source, target, sample=args.sample, progress=bar())
    _print_json({**asdict(report), "ok": report.ok})
    if not report.ok:
        print("localmem: error: the copy does not match its source:\n  " + "\n  ".join(report.problems),
              file=sys.stderr)
        return 1
    return 0


# -- models ------------------------------------------------------------------------------

_COMPARE_TEXTS = (
    "I'm planning three days in Lisbon in May. Where should I stay?",
    "Alfama or Chiado: both walkable, close to trams and viewpoints.",
    "I'm vegetarian, by the way.",
    "Try Ao 26 in Chiado for dinner; book a day ahead.",
    "Add a day trip to Sintra on the second day.",
    "The invoice for March is overdue; please pay by Friday.",
    "Our API returns 429 when you send more than ten requests a second.",
    "Remind me to water the plants on Sunday morning.",
    "Quero pedir pizza hoje à noite. O que você recomenda?",
    "Que tal uma margherita com manjericão fresco? É clássica.",
    "Prefiro sem cebola e com borda recheada de catupiry.",
    "Sim, um guaraná gelado, por favor.",
    "The meeting moved to Thursday at 3 pm in room B.",
    "How do I reset my password if I lost access to my email?",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "He scored twice in the final minutes and won the cup.",
)
_COMPARE_QUERIES = (
    "where to stay in Lisbon",
    "pizza sem cebola",
    "rate limit of the API",
    "when is the meeting",
)


def _model_kind(args: argparse.Namespace) -> str:
    if args.kind is not None:
        return args.kind
    spec = REGISTRY.get(args.name)
    return spec.kind if spec is not None else "embedder"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _timed(func: Any, batches: list[Any], rounds: int = 3) -> tuple[list[Any], float]:
    """func over every batch: (results of the last round, mean ms per batch)."""
    func(batches[0])  # loads the session
    started = time.perf_counter()
    for _ in range(rounds):
        results = [func(b) for b in batches]
    return results, (time.perf_counter() - started) * 1000 / (rounds * len(batches))


def _compare_int8(files: Any, int8_file: Any) -> list[str]:
    """A few seconds of fp32 vs int8 on fixed texts: speed, and how close the outputs are."""
    import numpy as np

    int8_files = replace(files, onnx_path=int8_file)
    if files.spec.kind == "embedder":
        from .embed import Embedder

        batches = [list(_COMPARE_TEXTS[i:i + 8]) for i in range(0, len(_COMPARE_TEXTS), 8)]
        fp32, fp32_ms = _timed(Embedder(files).embed, batches)
        int8, int8_ms = _timed(Embedder(int8_files).embed, batches)
        a, b = np.concatenate(fp32), np.concatenate(int8)
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        cosine = (a * b).sum(axis=1)
        quality = (f"mean cosine int8 vs fp32 {cosine.mean():.4f} "
                   f"(min {cosine.min():.4f}) over {len(cosine)} texts")
        unit = f"batch of {len(batches[0])} texts"
    else:
        from .rerank import CrossEncoder

        def scorer(model: Any) -> Any:
            return lambda query: model.score(query, list(_COMPARE_TEXTS))

        queries = list(_COMPARE_QUERIES)
        fp32, fp32_ms = _timed(scorer(CrossEncoder(files)), queries)
        int8, int8_ms = _timed(scorer(CrossEncoder(int8_files)), queries)
        same_top = sum(int(np.argmax(x) == np.argmax(y)) for x, y in zip(fp32, int8))
        ranks = [np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
                 for x, y in zip(fp32, int8)]
        delta = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(fp32, int8))
        quality = (f"same top document for {same_top}/{len(queries)} queries, mean rank "
                   f"correlation {float(np.mean(ranks)):.4f}, max |score change| {delta:.4f}")
        unit = f"query with {len(_COMPARE_TEXTS)} documents"
    return [
        (f"speed     fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms per {unit} "
         f"({fp32_ms / max(int8_ms, 1e-9):.1f}x)"),
        f"quality   {quality}",
    ]


def cmd_models_list(args: argparse.Namespace) -> int:
    """The registry, and where each model is found on this machine (nothing is fetched)."""
    rows = []
    table = [("NAME", "KIND", "DIM", "MAX_LEN", "LICENSE", "LOCAL")]
    for spec in REGISTRY.values():
        local: dict[str, str] | None
        try:
            files = resolve(spec.name, kind=spec.kind, download=False, int8=False)
            local = {"source": files.source, "directory": str(files.directory)}
        except LocalMemError:
            local = None
        default = spec.name in (DEFAULT_EMBEDDER, DEFAULT_RERANKER)
        rows.append({
            "name": spec.name, "kind": spec.kind, "dim": spec.dim, "max_length": spec.max_length,
            "license": spec.license, "default": default, "repo": spec.repo, "local": local,
        })
        where = f"{local['source']}: {local['directory']}" if local else "no"
        table.append((spec.name + (" *" if default else ""), spec.kind, str(spec.dim or "-"),
                      str(spec.max_length), spec.license, where))
    if args.json:
        _print_json(rows)
        return 0
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print("* default; 'localmem models download NAME' fetches a model, 'localmem models info NAME' shows one")
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    """Fetch a model into the cache (if it is not already here) and print its folder."""
    files = resolve(args.name, kind=_model_kind(args), download=True, int8=False,
                    timeout=args.timeout, attempts=args.attempts)
    print(files.directory)
    return 0


def cmd_models_info(args: argparse.Namespace) -> int:
    """A model's spec, the files it resolves to, their hash and size, and its int8 copy."""
    files = resolve(args.name, kind=_model_kind(args), path=args.path, download=False, int8=False)
    copy = int8_path(files.onnx_path)
    info: dict[str, Any] = {
        **{k: v for k, v in asdict(files.spec).items()},
        "source": files.source,
        "directory": str(files.directory),
        "onnx": str(files.onnx_path),
        "tokenizer": str(files.tokenizer_path),
        "bytes": files.onnx_path.stat().st_size,
        "sha256": file_sha256(files.onnx_path),
        "int8": str(copy) if copy.is_file() else None,
        "int8_bytes": copy.stat().st_size if copy.is_file() else None,
    }
    info["extra_files"] = list(info["extra_files"])
    if args.json:
        _print_json(info)
        return 0
    info["bytes"] = _mb(info["bytes"])
    if info["int8"] is None:
        how = f"localmem models quantize {files.spec.name}"
        if files.source == "path":
            how += f" --path {files.directory}"
        info["int8"] = f"none (make it with: {how})"
        del info["int8_bytes"]
    else:
        info["int8_bytes"] = _mb(info["int8_bytes"])
    info["extra_files"] = ", ".join(info["extra_files"])
    labels = {"bytes": "size", "int8_bytes": "int8 size", "int8": "int8 copy"}
    for key, value in info.items():
        shown = repr(value) if key.endswith("_prefix") else "-" if value is None else value
        print(f"{labels.get(key, key):<16}  {shown}")
    return 0


def cmd_models_quantize(args: argparse.Namespace) -> int:
    """Write a model's int8 copy, then compare it with fp32 for a few seconds."""
    files = resolve(args.name, kind=_model_kind(args), path=args.path, download=False, int8=False)
    kept = int8_path(files.onnx_path).is_file() and not args.force
    out = quantize(files, force=args.force)
    print(f"int8 copy {out}" + ("  (already there; --force rewrites it)" if kept else ""))
    fp32_size, int8_size = files.onnx_path.stat().st_size, out.stat().st_size
    print(f"size      fp32 {_mb(fp32_size)} -> int8 {_mb(int8_size)} "
          f"({100 * int8_size / max(fp32_size, 1):.0f}%)")
    for line in _compare_int8(files, out):
        print(line)
    where = f", path={str(files.directory)!r}" if files.source == "path" else ""
    print(f"use it with int8=True: localmem.load_{files.spec.kind}({files.spec.name!r}{where}, int8=True)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localmem",
        description="Conversation memory for AI agents, in one SQLite file.",
        epilog="Start with: localmem demo",
    )
    db_help = ("database file or postgresql:// URL (default: $LOCALMEM_DB, else memory.db in the user data "
               "directory)")
    parser.add_argument("--db", metavar="PATH", help=db_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help: str, db: str = db_help) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # SUPPRESS: given after the subcommand it wins; absent, the global --db stands.
        p.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=db)
        p.set_defaults(func=func)
        return p

    def ids(p: argparse.ArgumentParser, *, json: bool = True) -> None:
        p.add_argument("--conversation", required=True, metavar="ID", help="conversation id")
        p.add_argument("--owner", required=True, metavar="ID", help="owner (user) id")
        if json:
            p.add_argument("--json", action="store_true", help="print JSON")

    command("demo", cmd_demo, "a tour: six weeks of sample chats, then what each strategy finds",
            db="use this file instead of a fresh temporary database")

    add = command("add", cmd_add, "store one message and print its msg_id")
    ids(add)
    add.add_argument("--role", default="user", help=f"{' | '.join(ROLES)} (default: user)")
    add.add_argument("--feature", help="feature tag")
    add.add_argument("--msg-id", metavar="ID",
                     help="your own id; re-adding it with the same fields is a no-op")
    add.add_argument("--metadata", metavar="JSON", help='a JSON object, e.g. \'{"lang": "en"}\'')
    add.add_argument("text", metavar="TEXT", help="the message; - reads it from stdin")

    recent = command("recent", cmd_recent, "print the most recent messages of a conversation")
    ids(recent)
    recent.add_argument("--limit", type=int, default=10, metavar="N", help="at most N (default: 10)")
    window = recent.add_mutually_exclusive_group()
    window.add_argument("--lookback-days", type=float, default=7, metavar="D",
                        help="only messages from the last D days (default: 7)")
    window.add_argument("--all", action="store_true", help="no time limit")

    search = command("search", cmd_search, "search a conversation, or all of an owner's, by meaning")
    ids(search)
    search.add_argument("query", metavar="QUERY", help="what to look for")
    strategies = [s.value for s in Strategy]
    search.add_argument("--strategy", default=Strategy.HYBRID.value, choices=strategies,
                        metavar="STRATEGY", help=f"{' | '.join(strategies)} (default: hybrid)")
    search.add_argument("--limit", type=int, default=10, metavar="N", help="at most N (default: 10)")
    search.add_argument("--dense-only", action="store_true", help="vectors only, no BM25 fusion")
    search.add_argument("--embedder", metavar="NAME", help="embedder (default: the recorded one)")
    search.add_argument("--reranker", metavar="NAME",
                        help="rerank with this cross-encoder (a registered name or a folder)")
    search.add_argument("--min-relevance", metavar="X",
                        help="the relevance floor: a cosine, none, or auto (default: auto)")
    search.add_argument("--rerank-threshold", metavar="X",
                        help="drop reranked messages scoring under X, or none (default: 0.5)")
    search.add_argument("--explain", action="store_true",
                        help="show how the answer was chosen: before, after, filtered")
    window = search.add_mutually_exclusive_group()
    window.add_argument("--lookback-days", type=float, default=7, metavar="D",
                        help="recent part and cross_conversation: the last D days (default: 7)")
    window.add_argument("--all", action="store_true", help="no time limit")

    context = command("context", cmd_context,
                      "print the context for a conversation's next reply, within a token budget")
    ids(context, json=False)  # (--format says how to print)
    context.add_argument("--max-tokens", type=int, default=4000, metavar="N", help="the budget (default: 4000)")
    context.add_argument("--format", choices=("text", "openai", "anthropic"), default="text", metavar="FORMAT",
                         help="text | openai (the chat messages, JSON) | anthropic (system + messages, JSON)"
                              " (default: text)")
    context.add_argument("--query", metavar="TEXT", help="what to retrieve history for"
                                                        " (default: the conversation's latest user message)")
    context.add_argument("--strategy", default=Strategy.AUTO.value, choices=strategies, metavar="STRATEGY",
                         help="how history is retrieved (default: auto)")
    context.add_argument("--instructions", metavar="TEXT", help="a system prompt to put first (counted)")
    context.add_argument("--memory-share", type=float, default=DEFAULT_MEMORY_SHARE, metavar="X",
                         help=f"share of the budget reserved for summary + history (default: {DEFAULT_MEMORY_SHARE})")
    context.add_argument("--history-limit", type=int, default=10, metavar="N",
                         help="retrieved messages at most (default: 10)")
    context.add_argument("--lookback-days", type=float, default=None, metavar="D",
                         help="retrieve from the last D days only (default: all time)")

    reembed = command("reembed", cmd_reembed,
                      "drop every vector and rebuild them all (with another embedder, if given)")
    reembed.add_argument("--embedder", metavar="NAME", help="the new embedder (default: the recorded one)")

    forget = command("forget", cmd_forget,
                     "delete an owner's, a conversation's or older messages for good (no byte left)")
    forget.add_argument("--owner", metavar="ID", help="this owner's messages")
    forget.add_argument("--conversation", metavar="ID", help="only this conversation of the owner's")
    forget.add_argument("--before", metavar="TIME", help="only messages older than TIME (ISO 8601, with offset)")

    maintain = command("maintain", cmd_maintain,
                       "upkeep, safe from cron while agents write: caches, retention, index, space, integrity")
    maintain.add_argument("--max-age-days", type=float, metavar="D",
                          help="retention: remove messages older than D days (default: keep all)")
    maintain.add_argument("--archive", metavar="PATH",
                          help="write what retention removes here first (.jsonl or .parquet; {time}, {owner})")
    vacuum = maintain.add_mutually_exclusive_group()
    vacuum.add_argument("--vacuum", action="store_true", default=None,
                        help="always VACUUM (default: when a fifth of the pages are free)")
    vacuum.add_argument("--no-vacuum", dest="vacuum", action="store_false", help="never VACUUM")
    maintain.add_argument("--no-integrity", action="store_true", help="skip the integrity check")
    maintain.add_argument("--json", action="store_true", help="print JSON")

    stats = command("stats", cmd_stats, "which strategies ran, how fast, how often auto chose them (the strategy log)")
    stats.add_argument("--owner", metavar="ID", help="one owner (default: all)")
    stats.add_argument("--days", type=float, default=7, metavar="N", help="the last N days; 0: all the log (default: 7)")
    stats.add_argument("--json", action="store_true", help="print JSON")

    command("metrics", cmd_metrics, "print Prometheus metrics (all processes' with PROMETHEUS_MULTIPROC_DIR)")

    info = command("info", cmd_info, "print the database's path, schema version, size and counts")
    info.add_argument("--json", action="store_true", help="print JSON")

    export = command("export", cmd_export, "write messages to a JSONL (or Parquet) file, and print what was written")
    export.add_argument("path", metavar="PATH", help="the file to write (a name ending in .parquet: Parquet)")
    export.add_argument("--owner", metavar="ID", help="one owner's messages (default: everyone's)")
    export.add_argument("--conversation", metavar="ID", help="one conversation of --owner")
    export.add_argument("--before", metavar="TIME",
                        help="only messages created before this ISO 8601 time, e.g. 2024-05-01T00:00:00+00:00")
    export.add_argument("--vectors", action="store_true", help="with each message's vector")
    export.add_argument("--format", choices=("jsonl", "parquet"), default=None, metavar="FORMAT",
                        help="jsonl | parquet (default: from the file name)")
    export.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")

    importing = command("import", cmd_import,
                        "store the messages of an export file (again: nothing changes), and print what was done")
    importing.add_argument("path", metavar="PATH", help="a file written by localmem export (JSONL or Parquet)")
    importing.add_argument("--skip-invalid", action="store_true",
                           help="import the valid lines and list the others (default: nothing from a file with a bad line)")

    moving = sub.add_parser(
        "migrate", help="copy a database into another (a file into PostgreSQL), with its vectors, and check the copy",
        description="Copy every message and vector of --from into --to (created if need be; running it again "
                    "finishes an interrupted copy), then compare counts and a sample of searches.")
    moving.add_argument("--from", dest="source", required=True, metavar="DB", help="the database to copy (a file)")
    moving.add_argument("--to", dest="target", required=True, metavar="DB",
                        help="where to copy it: a postgresql:// URL (or another file)")
    moving.add_argument("--sample", type=int, default=50, metavar="N",
                        help="messages whose searches are compared (default: 50)")
    moving.set_defaults(func=cmd_migrate)

    mcp = command("mcp", cmd_mcp, "serve the memory to MCP clients over stdio (extra: mcp)")
    mcp.add_argument("--owner", metavar="ID", help="the owner the tools serve (default: $LOCALMEM_OWNER; "
                                                   "else every call names one)")
    mcp.add_argument("--conversation", metavar="ID", help="the conversation calls default to "
                                                          "(default: $LOCALMEM_CONVERSATION, else 'default')")
    model = mcp.add_mutually_exclusive_group()
    model.add_argument("--embedder", metavar="NAME", help="embedder (default: the recorded one, else all-MiniLM-L6-v2)")
    model.add_argument("--keywords-only", action="store_true",
                       help="no embedding model: recall searches by keywords (new messages wait for vectors)")

    models_help = "list, download, inspect and quantize the ONNX models"
    models = sub.add_parser("models", help=models_help, description=models_help)
    models_sub = models.add_subparsers(title="actions", dest="models_command", required=True,
                                       metavar="ACTION")

    def model_command(name: str, func: Any, help: str, *, path: bool = True) -> argparse.ArgumentParser:
        p = models_sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if name != "list":
            p.add_argument("name", metavar="NAME", help="a registered model name (see: localmem models list)")
            p.add_argument("--kind", choices=("embedder", "reranker"), default=None, metavar="KIND",
                           help="embedder | reranker, for a model not in the registry (default: embedder)")
        if path:
            p.add_argument("--path", metavar="DIR",
                           help="use the model in this folder (model.onnx + tokenizer.json)")
        return p

    listing = model_command("list", cmd_models_list, "the known models and where each is found here",
                            path=False)
    listing.add_argument("--json", action="store_true", help="print JSON")
    fetch = model_command("download", cmd_models_download,
                          "fetch a model from the Hugging Face Hub and print its folder", path=False)
    fetch.add_argument("--timeout", type=float, metavar="S",
                       help="give up on a connection silent this many seconds "
                            "(default: $LOCALMEM_DOWNLOAD_TIMEOUT, else 15)")
    fetch.add_argument("--attempts", type=int, metavar="N",
                       help="tries per file (default: $LOCALMEM_DOWNLOAD_ATTEMPTS, else 3)")
    model_info = model_command("info", cmd_models_info,
                               "a model's settings, files, sha256, size and int8 copy")
    model_info.add_argument("--json", action="store_true", help="print JSON")
    quantize = model_command("quantize", cmd_models_quantize,
                             "write an int8 copy of a model and compare it with fp32")
    quantize.add_argument("--force", action="store_true", help="rewrite an existing int8 copy")
    return parser


def _utf8_output() -> None:
    """Print UTF-8 whatever the locale says, so accents never crash the output."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 on usage errors)."""
    args = _parser().parse_args(argv)
    _utf8_output()
    try:
        return args.func(args)
    except LocalMemError as exc:
        print(f"localmem: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
