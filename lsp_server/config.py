"""The language server's settings: one dataclass per component, parsed once from the wire.

Settings arrive three ways: command-line flags (`fim-lsp serve --model ...`), the client's
`initializationOptions`, and `workspace/didChangeConfiguration`. All three end up here as a
`ServerConfig`; a bad value raises ConfigError naming the key and what it accepts, and the server
keeps the configuration it had.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lsp_server.ignore import gitignore_rules

Multiline = Literal["auto", "never", "always"]
FimMode = Literal["auto", "spm", "psm"]

SECTION_NAMES = ("fim-lsp", "fimLsp", "fim_lsp")  # where clients nest our settings


class ConfigError(ValueError):
    """A setting has the wrong type or an unknown value."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which model to load and where; changing any field reloads the model."""

    model: str | None = None  # checkpoint directory or hub id; None = the bundled default model
    revision: str | None = None  # hub revision
    backend: str = "auto"  # auto, torch, onnx, openai
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto, float32, bfloat16, float16, int8, int4 (int8 / 4-bit weights on the CPU)
    cache_bytes: int | None = None  # KV cache byte budget; None = sized from free memory
    cache_regions: int = 2  # cursor regions each document keeps cached (2: jumping back and forth stays warm)
    threads: int | None = None  # CPU threads for the engine; None = all cores
    url: str | None = None  # OpenAI-compatible server for backend "openai", e.g. http://127.0.0.1:8000
    api_key: str | None = field(default=None, repr=False)  # bearer key for `url`; None = $FIM_LSP_API_KEY
    family: str | None = None  # FIM spelling for "openai" without a local tokenizer: starcoder, santacoder
    remote_model: str | None = None  # model name sent to `url`; None = the first one its /v1/models lists
    remote_timeout_s: float = 30.0  # how long one request to `url` may take to answer
    ca_bundle: str | None = None  # PEM file (or directory) of the CAs trusted for an https `url`; None = the system's
    speculate: int | None = None  # prompt-lookup draft tokens per greedy step; 0 = off, None = where it pays
    key_url: str | None = None  # the url the operator gave (command line): the only one $FIM_LSP_API_KEY goes to
    client_urls_get_key: bool = False  # opt-in: $FIM_LSP_API_KEY also goes to a url a client sets

    @property
    def sends_env_key(self) -> bool:
        """Whether $FIM_LSP_API_KEY may go to `url`: it is the operator's url, or the operator opted in
        to client-set urls (a client could otherwise point `url` at itself and collect the key)."""
        return self.url == self.key_url or self.client_urls_get_key

    @property
    def runtime(self) -> str:
        """The backend that runs the model: `backend`, where auto with a `url` means the remote one."""
        return "openai" if self.backend == "auto" and self.url else self.backend


@dataclass(frozen=True, slots=True)
class CompletionSettings:
    """How each completion is prompted, generated and trimmed; applies from the next request."""

    max_new_tokens: int = 64  # generation budget per request
    temperature: float = 0.0  # 0 = greedy
    multiline: Multiline = "auto"  # single line mid-line, a block after an opener
    prefix_suffix_ratio: float = 3.0  # how the prompt budget splits between before and after the cursor
    neighbours: bool = True  # add snippets from other open documents of the same language
    repo_name: bool = True  # head StarCoder prompts with <reponame> and the workspace folder's name
    fim_mode: FimMode = "auto"  # FIM template order; auto = the family's trained default
    time_budget_s: float | None = None  # wall-clock cap on decoding
    token_healing: bool = True  # re-spell the token at the cursor (engine.healing); off: prompt as typed
    # hide a suggestion when the model gave one of its tokens less than this probability (0: show all)
    min_token_probability: float = 0.0
    # one-line suggestions: compare this many lines (a beam search), the likeliest shown
    # (None: `pipeline.AUTO_BEAM` for small models, 1 otherwise)
    beam: int | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server is configured with."""

    model: ModelConfig = field(default_factory=ModelConfig)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    debounce_ms: int = 0  # wait this long for a newer request before running the model
    # no fixed debounce: wait for a newer keystroke only while the model is slower than the typing (lsp_server.pacing)
    adaptive_wait: bool = False  # saves CPU, costs latency at every pause (docs/benchmarks/session.md)
    idle_prefill: bool = True  # while idle, prefill the prompt at the cursor a client hints at (lsp_server.prefill)
    prefetch: bool = True  # after an accept, compute the next suggestion before it is asked for
    prefill_chunk_tokens: int = 64  # most prompt tokens per background engine job (a request waits for one)
    prefill_delay_ms: int = 250  # an edit not followed by a request within this long is taken as a cursor hint
    alternatives: int = 3  # suggestions offered for a request made by hand (each one more decode)
    # documents never completed nor read for other documents' prompts (.gitignore patterns, e.g. ".env", "/config/*.py")
    exclude: tuple[str, ...] = ()
    # also leave out of other documents' prompts what the workspace's .gitignore files exclude
    exclude_gitignored: bool = True


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as clients send it: where it lands, what it accepts, and what it does."""

    component: Literal["model", "completion", "server"]
    field: str  # the dataclass field it sets
    types: tuple[type, ...]  # accepted JSON types
    allowed: tuple[Any, ...] | None  # accepted values (None: any of those types)
    doc: str  # one sentence for users: the clients' settings lists and docs/settings.md say this


# The settings list, in one place: wire key -> Setting. The VS Code extension's package.json and
# its SERVER_KEYS, and docs/settings.md, are checked against it by tests/test_config.py.
SETTINGS: dict[str, Setting] = {
    "model": Setting(
        "model", "model", (str, type(None)), None,
        "Checkpoint directory or hub id; empty means the bundled default model."),
    "revision": Setting(
        "model", "revision", (str, type(None)), None,
        "Hub revision (branch, tag or commit) of fim-lsp.model."),
    "backend": Setting(
        "model", "backend", (str,), ('auto', 'torch', 'onnx', 'openai', 'reference'),
        "Runtime that runs the model; auto picks the fastest available."),
    "device": Setting(
        "model", "device", (str,), None,
        "auto, cpu, cuda or cuda:N."),
    "dtype": Setting(
        "model", "dtype", (str,), ('auto', 'float32', 'bfloat16', 'float16', 'int8', 'int4'),
        "Weight and activation dtype; int8: int8 weights on the CPU (auto picks it for large models on CPUs "
        "with int8 instructions); int4: 4-bit weights on the CPU (auto never picks it)."),
    "cacheBytes": Setting(
        "model", "cache_bytes", (int, type(None)), None,
        "KV cache byte budget; empty sizes it from free memory."),
    "maxNewTokens": Setting(
        "completion", "max_new_tokens", (int,), None,
        "Most tokens generated for one suggestion."),
    "temperature": Setting(
        "completion", "temperature", (int, float), None,
        "0 is greedy (the same buffer gives the same suggestion)."),
    "multiline": Setting(
        "completion", "multiline", (str,), ('auto', 'never', 'always'),
        "auto: one line mid-line, a block after an opener."),
    "prefixSuffixRatio": Setting(
        "completion", "prefix_suffix_ratio", (int, float), None,
        "How the prompt budget splits between text before and after the cursor."),
    "neighbours": Setting(
        "completion", "neighbours", (bool,), None,
        "Add snippets from other open documents of the same language to the prompt."),
    "repoName": Setting(
        "completion", "repo_name", (bool,), None,
        "Head StarCoder-family prompts with <reponame> and the workspace folder's name, as StarCoder saw "
        "repositories in training."),
    "fimMode": Setting(
        "completion", "fim_mode", (str,), ('auto', 'spm', 'psm'),
        "Fill-in-the-middle template order; auto is the model family's trained default."),
    "timeBudgetMs": Setting(
        "completion", "time_budget_s", (int, float, type(None)), None,
        "Wall-clock cap on decoding one suggestion."),
    "tokenHealing": Setting(
        "completion", "token_healing", (bool,), None,
        "Let the model re-spell the token at the cursor, so a prompt that ends in indentation or half a word "
        "ends where the tokenizer would cut finished text."),
    "minTokenProbability": Setting(
        "completion", "min_token_probability", (int, float), None,
        "Hide an automatic suggestion when the model gave one of its tokens less than this probability (0 "
        "shows every suggestion; Trigger Inline Suggestion shows it anyway). fim-lsp/status reports the last "
        "suggestion's lowest token probability, to tune it."),
    "beam": Setting(
        "completion", "beam", (int, type(None)), None,
        "One-line suggestions: compare this many lines (a beam search in the engine; elsewhere the greedy "
        "lines of this many likeliest first tokens) and show the likeliest; empty uses 3 for models under 100"
        " M parameters (the bundled default model), 1 (greedy) otherwise."),
    "cacheRegions": Setting(
        "model", "cache_regions", (int,), (1, 2),
        "Cursor regions each document keeps cached: 2 keeps the place the cursor left warm beside the current "
        "one, so jumping back and forth costs no prefill; 1 keeps one prompt per document."),
    "adaptiveWait": Setting(
        "server", "adaptive_wait", (bool,), None,
        "While the model is slower than your typing, wait about one and a half typing intervals for the next "
        "keystroke before running it (a suggestion nobody would see costs nothing); no wait when the model is "
        "fast. Off by default: it saves CPU (battery) but every pause waits that much longer for its "
        "suggestion. A debounceMs above 0 replaces it."),
    "idlePrefill": Setting(
        "server", "idle_prefill", (bool,), None,
        "While the model is idle, prefill the prompt where the cursor rests (the clients send fim-lsp/cursor "
        "hints), so the first suggestion after opening a file, a jump or a file switch is quick."),
    "prefetch": Setting(
        "server", "prefetch", (bool,), None,
        "While a suggestion is shown, compute the one that would follow it, so accepting it (Tab) brings "
        "the next suggestion at once; after an accept it was not ready for, compute the next one then."),
    "prefillChunkTokens": Setting(
        "server", "prefill_chunk_tokens", (int,), None,
        "Most prompt tokens per background prefill step (fewer on a slow model: a step takes about 100 ms), "
        "so a keystroke waits little for background work."),
    "prefillDelayMs": Setting(
        "server", "prefill_delay_ms", (int,), None,
        "An edit no request follows within this long counts as a cursor hint (idlePrefill)."),
    "debounceMs": Setting(
        "server", "debounce_ms", (int,), None,
        "Server-side wait for a newer keystroke before running the model."),
    "alternatives": Setting(
        "server", "alternatives", (int,), None,
        "Suggestions offered when you ask by hand (Trigger Inline Suggestion, Alt+]): the best, then ones "
        "that start with the model's next likeliest tokens. Each is one more decode; 1 offers only the best."),
    "exclude": Setting(
        "server", "exclude", (list,), None,
        "Files the model never sees: not completed, and never quoted as context in other files' prompts. "
        "Patterns as in .gitignore, from the workspace folder: a name without '/' matches at any depth (\".env\", "
        "\"*.pem\", \"secrets/\"); a leading or inner '/' anchors (\"/config/*.py\"); '**' crosses directories; "
        "'!' re-includes."),
    "excludeGitignored": Setting(
        "server", "exclude_gitignored", (bool,), None,
        "Also keep what the workspace's .gitignore files exclude (build output, local configuration) out of "
        "other files' prompts."),
    "url": Setting(
        "model", "url", (str, type(None)), None,
        "An OpenAI-compatible completion server (vLLM, TGI, llama.cpp), e.g. http://127.0.0.1:8000; with "
        "backend auto or openai the model runs there. Its API key is read from the server's FIM_LSP_API_KEY "
        "environment variable."),
    "apiKey": Setting(
        "model", "api_key", (str, type(None)), None,
        "Bearer key for url; better left unset in settings files: the server reads FIM_LSP_API_KEY from its "
        "environment."),
    "family": Setting(
        "model", "family", (str, type(None)), ('starcoder', 'santacoder', None),
        "FIM token spelling for fim-lsp.url when no local tokenizer (fim-lsp.model) names it."),
    "remoteModel": Setting(
        "model", "remote_model", (str, type(None)), None,
        "Model name sent to fim-lsp.url; empty takes the first one its /v1/models lists."),
    "remoteTimeoutMs": Setting(
        "model", "remote_timeout_s", (int, float), None,
        "How long one request to fim-lsp.url may take to answer."),
    "caBundle": Setting(
        "model", "ca_bundle", (str, type(None)), None,
        "A PEM file (or a directory of them) of the CA certificates trusted for an https fim-lsp.url, for a "
        "server whose certificate a private CA signed; empty: the system's CAs, or $SSL_CERT_FILE / "
        "$SSL_CERT_DIR. Proxies come from $HTTPS_PROXY / $HTTP_PROXY / $NO_PROXY."),
    "speculate": Setting(
        "model", "speculate", (int, type(None)), None,
        "Prompt-lookup draft tokens verified per greedy step; 0 turns it off, empty uses it where it pays (on"
        " the CPU)."),
}
_IGNORED = {"token"}  # read elsewhere (the TCP shared secret)
RENAMED = {"branches": "beam"}  # old wire key -> its name now (accepted, with a note that says so)


def apply_settings(config: ServerConfig, raw: Any, notes: list[str] | None = None) -> ServerConfig:
    """`config` with the wire settings in `raw` applied; raise ConfigError on any bad value.

    `raw` is the client's JSON: flat (`{"maxNewTokens": 32}`) or nested under a section name
    (`{"fim-lsp": {...}}`, as VS Code sends it). Unknown keys are an error, so a typo is seen;
    a renamed key still applies and a line saying so is appended to `notes`.
    """
    if raw is None:
        return config
    if not isinstance(raw, dict):
        raise ConfigError(f"settings must be a JSON object, got {type(raw).__name__}")
    for name in SECTION_NAMES:
        if isinstance(raw.get(name), dict):
            raw = raw[name]
            break
    changes: dict[str, dict[str, Any]] = {"model": {}, "completion": {}, "server": {}}
    for key, value in raw.items():
        if key in _IGNORED:
            continue
        if key in RENAMED:
            if notes is not None:
                notes.append(f"setting {key!r} is now called {RENAMED[key]!r}; the old name still works for now")
            key = RENAMED[key]
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS))}")
        setting = SETTINGS[key]
        component, name, types, allowed = setting.component, setting.field, setting.types, setting.allowed
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"setting {key!r} must be {wanted}, got {value!r}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"setting {key!r} must be one of {list(allowed)}, got {value!r}")
        if key in ("timeBudgetMs", "remoteTimeoutMs") and value is not None:
            value = value / 1000
        if key == "exclude":
            if not all(isinstance(pattern, str) and pattern.strip() for pattern in value):
                raise ConfigError(f"setting 'exclude' must be a list of glob patterns as in .gitignore, such as "
                                  f"\".env\", got {value!r}")
            value = tuple(value)
            try:
                gitignore_rules(value)
            except ValueError as exc:
                raise ConfigError(f"setting 'exclude': {exc}") from None
        changes[component][name] = value
    merged = replace(
        config,
        model=replace(config.model, **changes["model"]),
        completion=replace(config.completion, **changes["completion"]),
        **changes["server"],
    )
    check(merged)
    return merged


def check(config: ServerConfig) -> None:
    """Raise ConfigError when a value is out of range."""
    c = config.completion
    if not 1 <= c.max_new_tokens <= 4096:
        raise ConfigError(f"maxNewTokens must be between 1 and 4096, got {c.max_new_tokens}")
    if c.temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {c.temperature}")
    if c.prefix_suffix_ratio <= 0:
        raise ConfigError(f"prefixSuffixRatio must be > 0, got {c.prefix_suffix_ratio}")
    if not 0 <= c.min_token_probability < 1:
        raise ConfigError(f"minTokenProbability must be >= 0 and < 1, got {c.min_token_probability}")
    if c.beam is not None and not 1 <= c.beam <= 8:
        raise ConfigError(f"beam must be between 1 and 8, got {c.beam}")
    if c.time_budget_s is not None and c.time_budget_s <= 0:
        raise ConfigError(f"timeBudgetMs must be > 0, got {c.time_budget_s * 1000}")
    if config.debounce_ms < 0:
        raise ConfigError(f"debounceMs must be >= 0, got {config.debounce_ms}")
    if not 1 <= config.prefill_chunk_tokens <= 4096:
        raise ConfigError(f"prefillChunkTokens must be between 1 and 4096, got {config.prefill_chunk_tokens}")
    if config.prefill_delay_ms < 0:
        raise ConfigError(f"prefillDelayMs must be >= 0, got {config.prefill_delay_ms}")
    if not 1 <= config.alternatives <= 8:
        raise ConfigError(f"alternatives must be between 1 and 8, got {config.alternatives}")
    if config.model.cache_bytes is not None and config.model.cache_bytes <= 0:
        raise ConfigError(f"cacheBytes must be > 0, got {config.model.cache_bytes}")
    m = config.model
    if m.backend == "openai" and not m.url:
        raise ConfigError("backend 'openai' needs url (the server's address, e.g. http://127.0.0.1:8000)")
    if m.url is not None and not m.url.startswith(("http://", "https://")):
        raise ConfigError(f"url must start with http:// or https://, got {m.url!r}")
    if m.remote_timeout_s <= 0:
        raise ConfigError(f"remoteTimeoutMs must be > 0, got {m.remote_timeout_s * 1000}")
    if m.speculate is not None and not 0 <= m.speculate <= 64:
        raise ConfigError(f"speculate must be between 0 and 64 draft tokens, got {m.speculate}")


def config_from_args(args: Any) -> ServerConfig:
    """The configuration the command line asks for (`fim-lsp serve/demo/complete` flags)."""
    url = getattr(args, "url", None)
    backend = getattr(args, "backend", "auto")
    model = ModelConfig(
        model=getattr(args, "model", None), revision=getattr(args, "revision", None),
        backend=backend, device=getattr(args, "device", "auto"),
        dtype=getattr(args, "dtype", "auto"), threads=getattr(args, "threads", None), url=url,
        speculate=getattr(args, "speculate", None), ca_bundle=getattr(args, "ca_bundle", None), key_url=url,
        client_urls_get_key=bool(getattr(args, "allow_client_url", False)),
    )
    completion = CompletionSettings()
    if getattr(args, "max_new_tokens", None) is not None:
        completion = replace(completion, max_new_tokens=args.max_new_tokens)
    if getattr(args, "temperature", None) is not None:
        completion = replace(completion, temperature=args.temperature)
    if getattr(args, "beam", None) is not None:
        completion = replace(completion, beam=args.beam)
    if getattr(args, "fim_mode", None) is not None:
        completion = replace(completion, fim_mode=args.fim_mode)
    config = ServerConfig(model=model, completion=completion)
    check(config)
    return config


def default_of(key: str) -> Any:
    """A setting's default, as its wire value (milliseconds where the key says Ms)."""
    setting = SETTINGS[key]
    owner = {"model": ModelConfig(), "completion": CompletionSettings(), "server": ServerConfig()}[setting.component]
    value = getattr(owner, setting.field)
    if key.endswith("Ms") and isinstance(value, float):
        value = round(value * 1000)
    return list(value) if isinstance(value, tuple) else value


def settings_table() -> str:
    """The settings as a Markdown table (docs/settings.md holds exactly this; a test checks it)."""
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for key, setting in SETTINGS.items():
        default = default_of(key)
        shown = "empty" if default is None else f"`{json.dumps(default)}`"
        values = f" One of: {', '.join(f'`{v}`' for v in setting.allowed if v is not None)}." if setting.allowed else ""
        rows.append(f"| `{key}` | {shown} | {setting.doc}{values} |")
    return "\n".join(rows) + "\n"
