// fim-lsp for VS Code: starts `fim-lsp serve` over stdio and lets vscode-languageclient 11 turn its
// textDocument/inlineCompletion answers into ghost text. A status bar item shows the model, the
// backend and the last latency (from the custom `fim-lsp/status` request) and spins while the
// model loads ($/progress). A server that is missing or crashes is reported once and not
// restarted behind the user's back; "fim-lsp: Restart Server" starts it again.
import * as fs from 'fs';
import * as path from 'path';
import * as vscode from 'vscode';
import {
  CloseAction, ErrorAction, LanguageClient, LanguageClientOptions, ServerOptions, State,
  WorkDoneProgress, WorkDoneProgressCreateRequest,
} from 'vscode-languageclient/node';

const SECTION = 'fim-lsp';
const STATUS_REQUEST = 'fim-lsp/status';
// the documents the client syncs with the server (and the only ones it sends cursor hints for)
const DOCUMENT_SELECTOR = [{ scheme: 'file' }, { scheme: 'untitled' }, { scheme: 'vscode-notebook-cell' }];
const CURSOR_NOTIFICATION = 'fim-lsp/cursor'; // a hint: the server prefills the prompt there while idle
const CURSOR_DEBOUNCE_MS = 150;
// Settings the server understands (its wire names); the rest only concern how it is started.
const SERVER_KEYS = ['model', 'revision', 'backend', 'device', 'dtype', 'maxNewTokens', 'temperature', 'multiline',
  'debounceMs', 'neighbours', 'repoName', 'tokenHealing', 'minTokenProbability', 'beam', 'fimMode', 'prefixSuffixRatio', 'timeBudgetMs',
  'cacheBytes', 'speculate', 'alternatives', 'exclude', 'excludeGitignored', 'url', 'remoteModel', 'family', 'remoteTimeoutMs',
  'caBundle', 'adaptiveWait', 'idlePrefill', 'prefetch', 'prefillChunkTokens', 'prefillDelayMs', 'cacheRegions'] as const;
const LAUNCH_KEYS = ['command', 'pythonPath', 'extraArgs'];
const ENABLE_KEY = 'enable'; // language id -> boolean; '*' for the rest (read here, never sent)

interface ServerStatus {
  state?: string; error?: string | null; model?: string | null; backend?: string | null;
  device?: string | null; dtype?: string | null; cache_slots?: number | null; cache_bytes?: number | null;
  latency?: { p50_ms?: number; p95_ms?: number; count?: number } | null;
  last?: { latency_ms?: number } | null;
  acceptance?: { shown?: number; accepted?: number } | null;
  ahead?: {
    hints?: number; hints_dropped?: number; prefills?: number; prefetches?: number; prefetch_served?: number;
    last_hint?: { uri: string; line: number; character: number } | null;
  } | null;
}

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let failure: string | undefined;
let connected = false; // the running client finished starting (initialize answered)
let loading: string | undefined;
let lastStatus: ServerStatus | undefined;
let refreshTimer: NodeJS.Timeout | undefined;
let cursorTimer: NodeJS.Timeout | undefined;
let lastEditAt = 0; // typing sends its own requests: a cursor that moved with an edit needs no hint

/** Tell the server where the cursor rests (debounced): it moved without typing, or an editor
 * (a notebook cell's included) became active. The server only warms its cache there. */
function hintCursor(editor: vscode.TextEditor | undefined): void {
  if (cursorTimer) clearTimeout(cursorTimer);
  if (!editor) return;
  cursorTimer = setTimeout(() => {
    cursorTimer = undefined;
    const c = client;
    if (!c || c.state !== State.Running || !enabledFor(editor.document.languageId)) return;
    // only documents the client syncs: the server drops a hint for one it has not been given
    if (!vscode.languages.match(DOCUMENT_SELECTOR, editor.document)) return;
    const position = c.code2ProtocolConverter.asPosition(editor.selection.active);
    void c.sendNotification(CURSOR_NOTIFICATION, { textDocument: { uri: editor.document.uri.toString() }, position });
  }, CURSOR_DEBOUNCE_MS);
}
let sentKeys: string[] = []; // settings the running server was given

/** The server settings the user set (folder, workspace or user scope) as wire names. Defaults are
 * left to the server, so they never override what `extraArgs` gives its command line. */
function serverSettings(): Record<string, unknown> {
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const set = cfg.inspect(key);
    const value = set?.workspaceFolderValue ?? set?.workspaceValue ?? set?.globalValue;
    if (value !== null && value !== undefined && value !== '') out[key] = value;
  }
  return out;
}

/** Whether inline suggestions are on for a language: its own entry in fim-lsp.enable, else '*'. */
function enabledFor(languageId: string): boolean {
  const enable = vscode.workspace.getConfiguration(SECTION).get<Record<string, boolean>>(ENABLE_KEY) ?? {};
  return enable[languageId] ?? enable['*'] ?? true;
}

/** Flip fim-lsp.enable for the active editor's language, in the scope whose value is in force
 * (the workspace's where it sets one, else the user's). */
async function toggle(): Promise<void> {
  const languageId = vscode.window.activeTextEditor?.document.languageId;
  if (!languageId) {
    void vscode.window.showInformationMessage('fim-lsp: open a file to turn its language on or off.');
    return;
  }
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const set = cfg.inspect<Record<string, boolean>>(ENABLE_KEY);
  const inWorkspace = set?.workspaceValue !== undefined;
  const current = (inWorkspace ? set?.workspaceValue : set?.globalValue) ?? set?.defaultValue ?? {};
  const on = !enabledFor(languageId);
  await cfg.update(ENABLE_KEY, { ...current, [languageId]: on },
    inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global);
  output.info(`inline suggestions ${on ? 'on' : 'off'} for ${languageId}`);
  render();
}

/** Executable and arguments, or an error message saying what to set. */
function launch(): { command: string; args: string[] } | { error: string } {
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const extra = cfg.get<string[]>('extraArgs') ?? [];
  const python = (cfg.get<string>('pythonPath') ?? '').trim();
  if (python) {
    return findExecutable(python)
      ? { command: python, args: ['-m', 'fim_lsp.cli', 'serve', ...extra] }
      : { error: `fim-lsp.pythonPath "${python}" is not an executable file.` };
  }
  const command = (cfg.get<string>('command') ?? 'fim-lsp').trim() || 'fim-lsp';
  const found = findExecutable(command);
  return found
    ? { command: found, args: ['serve', ...extra] }
    : { error: `The fim-lsp server "${command}" was not found. Install it (pip install fim-lsp) or set ` +
        'fim-lsp.command to its path, or fim-lsp.pythonPath to a Python that has it.' };
}

function findExecutable(command: string): string | undefined {
  const isFile = (p: string) => {
    try { fs.accessSync(p, fs.constants.X_OK); return fs.statSync(p).isFile(); } catch { return false; }
  };
  if (command.includes(path.sep)) return isFile(command) ? command : undefined;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, command);
    if (dir && isFile(candidate)) return candidate;
  }
  return undefined;
}

function render(): void {
  if (failure) {
    statusItem.text = '$(error) fim-lsp';
    statusItem.tooltip = `${failure}\nClick for status; run "fim-lsp: Restart Server" after fixing it.`;
  } else if (loading !== undefined) {
    statusItem.text = `$(sync~spin) fim-lsp${loading ? ': ' + loading : ''}`;
    statusItem.tooltip = 'Loading the model';
  } else if (lastStatus?.model) {
    const model = path.basename(lastStatus.model);
    const language = vscode.window.activeTextEditor?.document.languageId;
    if (language !== undefined && !enabledFor(language)) {
      statusItem.text = `$(circle-slash) ${model} · off`;
      statusItem.tooltip = `Inline suggestions are off for ${language} ("fim-lsp: Toggle Inline Suggestions" ` +
        `turns them on)\n${describe(lastStatus)}`;
    } else {
      const ms = lastStatus.last?.latency_ms;
      statusItem.text = `$(sparkle) ${model} · ${lastStatus.backend ?? '?'}` +
        (ms !== undefined ? ` · ${Math.round(ms)} ms` : '');
      statusItem.tooltip = describe(lastStatus);
    }
  } else {
    statusItem.text = '$(sparkle) fim-lsp';
    statusItem.tooltip = 'fim-lsp: starting';
  }
  statusItem.show();
}

function describe(s: ServerStatus): string {
  const mb = s.cache_bytes != null ? ` (${(s.cache_bytes / 2 ** 20).toFixed(1)} MiB)` : '';
  const lat = s.latency ?? {};
  const ahead = s.ahead ?? {};
  const hint = ahead.last_hint;
  return [
    `model: ${s.model ?? '-'} (${s.state ?? '?'})`,
    `backend: ${s.backend ?? '-'} on ${s.device ?? '-'}, ${s.dtype ?? '-'}`,
    `cache: ${s.cache_slots ?? 0} slots${mb}`,
    `latency: p50 ${fmt(lat.p50_ms)} ms, p95 ${fmt(lat.p95_ms)} ms, last ${fmt(s.last?.latency_ms)} ms`,
    `accepted: ${s.acceptance?.accepted ?? 0} of ${s.acceptance?.shown ?? 0} shown`,
    `cursor hints: ${ahead.hints ?? 0} taken, ${ahead.hints_dropped ?? 0} dropped` +
      (hint ? `, last in ${path.posix.basename(vscode.Uri.parse(hint.uri).path)} at Ln ${hint.line + 1}, Col ${hint.character + 1}` : ''),
    `work ahead: ${ahead.prefills ?? 0} prompts warmed, ${ahead.prefetch_served ?? 0} of ` +
      `${ahead.prefetches ?? 0} prefetched suggestions used`,
    ...(s.error ? [`error: ${s.error}`] : []),
  ].join('\n');
}

const fmt = (v: number | undefined) => (v === undefined || v === null ? '-' : v.toFixed(0));

async function refreshStatus(): Promise<ServerStatus | undefined> {
  if (!client || client.state !== State.Running) return undefined;
  try {
    const s = await client.sendRequest<ServerStatus>(STATUS_REQUEST, {});
    lastStatus = s;
    if (s.state === 'failed' && s.error) failure = `fim-lsp: model failed to load: ${s.error}`;
  } catch (err) {
    output.appendLine(`fim-lsp/status failed: ${err}`);
  }
  render();
  return lastStatus;
}

function scheduleRefresh(): void {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => void refreshStatus(), 300);
}

/** One message for a broken server, with the ways out; never a retry loop. `notify` is false
 * where vscode-languageclient has already shown its own message for the same failure. */
function reportFailure(message: string, notify = true): void {
  if (failure) return; // already reported since the last start
  failure = message;
  loading = undefined;
  render();
  output.error(message);
  if (!notify) return;
  void vscode.window.showErrorMessage(message, 'Show Log', 'Open Settings', 'Restart').then((choice) => {
    if (choice === 'Show Log') output.show();
    if (choice === 'Open Settings') void vscode.commands.executeCommand('workbench.action.openSettings', SECTION);
    if (choice === 'Restart') void vscode.commands.executeCommand('fim-lsp.restart');
  });
}

async function start(): Promise<void> {
  failure = undefined;
  connected = false;
  lastStatus = undefined;
  const how = launch();
  if ('error' in how) return reportFailure(how.error);
  output.appendLine(`starting: ${how.command} ${how.args.join(' ')}`);
  const serverOptions: ServerOptions = { command: how.command, args: how.args };
  const initial = serverSettings();
  sentKeys = Object.keys(initial);
  const clientOptions: LanguageClientOptions = {
    documentSelector: DOCUMENT_SELECTOR,
    initializationOptions: initial,
    outputChannel: output,
    initializationFailedHandler: (err) => {
      // The client has shown "couldn't create connection to server" with a link to the log.
    reportFailure(`fim-lsp: the server failed to start: ${err instanceof Error ? err.message : err}`, false);
      return false;
    },
    errorHandler: {
      error: () => ({ action: ErrorAction.Shutdown, handled: true }),
      closed: () => {
        // Closed before the start finished: the client reports "couldn't create connection" itself
        // (which of the two comes first depends on timing); one message either way.
        reportFailure('fim-lsp: the server stopped unexpectedly. Its output is in the "fim-lsp" log.', connected);
        return { action: CloseAction.DoNotRestart, handled: true };
      },
    },
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!enabledFor(document.languageId)) return null; // off for this language: the server is not asked
        const result = await next(document, position, context, token);
        // "Developer: Set Log Level... > Trace" shows why no ghost text appeared (no items, or cancelled)
        output.trace(`inline ${position.line}:${position.character} (trigger ${context.triggerKind}${
          token.isCancellationRequested ? ', cancelled' : ''}): ${JSON.stringify(result)}`);
        scheduleRefresh();
        return result;
      },
      provideCompletionItem: (document, position, context, token, next) =>
        enabledFor(document.languageId) ? next(document, position, context, token) : null,
    },
  };
  const c = new LanguageClient(SECTION, 'fim-lsp', serverOptions, clientOptions);
  client = c;
  render();
  try {
    await c.start();
    connected = true;
  } catch (err) {
    // The client has shown "couldn't create connection to server" with a link to the log.
    reportFailure(`fim-lsp: the server failed to start: ${err instanceof Error ? err.message : err}`, false);
    client = undefined;
    return;
  }
  // Model-load progress goes to the status bar (replacing the client's default notification).
  c.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    const sub = c.onProgress(WorkDoneProgress.type, token, (value) => {
      if (value.kind === 'end') {
        loading = undefined;
        sub.dispose();
        void refreshStatus();
      } else {
        const pct = value.percentage !== undefined ? ` ${value.percentage}%` : '';
        const message = value.message ?? (value.kind === 'begin' ? value.title : '');
        loading = `${message.length > 48 ? '…' + message.slice(-47) : message}${pct}`.trim();
      }
      render();
    });
  });
  hintCursor(vscode.window.activeTextEditor);
  await refreshStatus();
}

async function stop(): Promise<void> {
  const c = client;
  client = undefined;
  if (c && c.state !== State.Stopped) {
    try { await c.stop(2000); } catch (err) { output.appendLine(`stopping: ${err}`); }
  }
}

async function showStatus(): Promise<void> {
  const s = await refreshStatus();
  const text = s ? describe(s) : failure ?? 'fim-lsp: the server is not running.';
  output.appendLine(text);
  void vscode.window.showInformationMessage(text.replace(/\n/g, ' · '), 'Show Log').then((choice) => {
    if (choice === 'Show Log') output.show();
  });
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('fim-lsp', { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.name = 'fim-lsp';
  statusItem.command = 'fim-lsp.showStatus';
  context.subscriptions.push(
    output, statusItem,
    vscode.commands.registerCommand('fim-lsp.restart', async () => { await stop(); await start(); }),
    vscode.commands.registerCommand('fim-lsp.showStatus', showStatus),
    vscode.commands.registerCommand('fim-lsp.showLog', () => output.show()),
    vscode.commands.registerCommand('fim-lsp.toggle', toggle),
    vscode.window.onDidChangeActiveTextEditor((editor) => { render(); hintCursor(editor); }),
    vscode.window.onDidChangeTextEditorSelection((e) => {
      // the cursor moved by typing: the completion request does the work, no hint
      if (Date.now() - lastEditAt < 50) { if (cursorTimer) clearTimeout(cursorTimer); return; }
      hintCursor(e.textEditor);
    }),
    vscode.workspace.onDidChangeTextDocument((e) => { if (e.contentChanges.length) lastEditAt = Date.now(); }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) return;
      const changed = (keys: readonly string[]) => keys.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
      if (changed([ENABLE_KEY])) render();
      if (!changed(SERVER_KEYS) && !changed(LAUNCH_KEYS)) return; // only what the client reads changed
      const settings = serverSettings();
      // A setting reset to its default needs a fresh server: a running one keeps the last value it got.
      const reset = sentKeys.some((k) => !(k in settings));
      if (LAUNCH_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`)) || reset || !client) {
        await stop();
        await start();
      } else if (client.state === State.Running) {
        sentKeys = Object.keys(settings);
        await client.sendNotification('workspace/didChangeConfiguration', { settings: { [SECTION]: settings } });
      }
    }),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
