// fim-lsp in JupyterLab: an inline completion provider (ghost text, Tab accepts) whose
// suggestions come from `fim-lsp serve` through this package's jupyter-server extension
// (POST /fim-lsp/inline). A notebook is sent whole, cells in order, with its kernel's language: the
// server sees it as an LSP notebook document, so the cells around the cursor are the prompt's context.
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import {
  CompletionHandler, ICompletionProviderManager, IInlineCompletionContext, IInlineCompletionItem,
  IInlineCompletionList, IInlineCompletionProvider, InlineCompletionTriggerKind,
} from '@jupyterlab/completer';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';

const ID = 'fim-lsp';
const CURSOR_DEBOUNCE_MS = 150;

interface Cell { kind: string; source: string }

/** The cells to send, the index of the one being edited and their language (a notebook's kernel
 * language, a file's from its MIME type); a file editor is one cell. */
function cellsOf(request: CompletionHandler.IRequest, context: IInlineCompletionContext):
    { path: string; cells: Cell[]; active: number; language: string } {
  const widget = context.widget;
  if (widget instanceof NotebookPanel) {
    const notebook = widget.content;
    const cells = notebook.widgets.map((cell) => ({ kind: cell.model.type, source: cell.model.sharedModel.getSource() }));
    // The editor's text is the freshest copy of the active cell.
    const active = notebook.activeCellIndex;
    cells[active] = { kind: cells[active]?.kind ?? 'code', source: request.text };
    const info = widget.model?.getMetadata('language_info') as { name?: string } | undefined;
    const spec = widget.model?.getMetadata('kernelspec') as { language?: string } | undefined;
    return { path: widget.context.path, cells, active, language: info?.name ?? spec?.language ?? 'python' };
  }
  const path = (widget as unknown as { context?: { path?: string } }).context?.path ?? 'untitled.py';
  // text/x-python -> python, text/typescript -> typescript
  const language = (request.mimeType ?? 'text/x-python').replace(/^[a-z]+\/(x-)?/, '');
  return { path, cells: [{ kind: 'code', source: request.text }], active: 0, language };
}

async function call(endpoint: string, init: RequestInit): Promise<{ ok: boolean; data: any }> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'fim-lsp', endpoint), init, settings);
  const text = await response.text();
  return { ok: response.ok, data: text ? JSON.parse(text) : {} };
}

class FimLspProvider implements IInlineCompletionProvider {
  readonly identifier = ID;
  readonly name = 'fim-lsp';
  private failure: string | null = null;

  async fetch(request: CompletionHandler.IRequest, context: IInlineCompletionContext): Promise<IInlineCompletionList> {
    if (this.failure) return { items: [] }; // reported once; "fim-lsp: Restart Server" clears it
    const { path, cells, active, language } = cellsOf(request, context);
    // Asked by hand (the completer's invoke or Alt+]): the server adds alternatives to cycle through.
    const invoked = context.triggerKind === InlineCompletionTriggerKind.Invoke;
    let reply;
    try {
      const body = JSON.stringify({ path, cells, active, offset: request.offset, invoked, language });
      reply = await call('inline', { method: 'POST', body });
    } catch (err) {
      return { items: [] }; // the Jupyter server is unreachable: the page says so already
    }
    if (!reply.ok) {
      if (reply.data.message && !/did not answer/.test(reply.data.message)) {
        this.failure = reply.data.message;
        Notification.error(`fim-lsp: ${this.failure}`, { autoClose: false });
      }
      return { items: [] };
    }
    const items: IInlineCompletionItem[] = reply.data.items
      .filter((item: { insertText: string }) => item.insertText)
      .map((item: { insertText: string }) => ({ insertText: item.insertText, isIncomplete: false }));
    return { items };
  }

  async restart(): Promise<void> {
    this.failure = null;
    await call('restart', { method: 'POST' });
  }
}

/** Tell the server where the cursor rests in the active notebook cell (POST /fim-lsp/cursor ->
 * `fim-lsp/cursor`), debounced: when a cell gets focus and when its cursor moves without typing
 * (typing asks for a completion, which does the work). The server prefills the prompt there. */
function watchCursor(tracker: INotebookTracker): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let editedAt = 0;
  let watched: { dispose: () => void } | undefined;
  const send = (panel: NotebookPanel) => {
    const notebook = panel.content;
    const cell = notebook.activeCell;
    const editor = cell?.editor;
    if (!cell || !editor || cell.model.type !== 'code') return;
    const cells = notebook.widgets.map((c) => ({ kind: c.model.type, source: c.model.sharedModel.getSource() }));
    const offset = editor.getOffsetAt(editor.getCursorPosition());
    const info = panel.model?.getMetadata('language_info') as { name?: string } | undefined;
    const body = JSON.stringify({ path: panel.context.path, cells, active: notebook.activeCellIndex, offset,
                                  language: info?.name ?? 'python' });
    call('cursor', { method: 'POST', body }).catch(() => undefined); // a hint: nothing to report
  };
  const schedule = () => {
    if (timer) clearTimeout(timer);
    const panel = tracker.currentWidget;
    if (!panel) return;
    timer = setTimeout(() => { timer = undefined; send(panel); }, CURSOR_DEBOUNCE_MS);
  };
  const follow = () => {
    watched?.dispose();
    watched = undefined;
    const cell = tracker.activeCell;
    if (cell) {
      const onSource = () => { editedAt = Date.now(); };
      const onSelection = () => {
        if (Date.now() - editedAt < 50) { if (timer) clearTimeout(timer); return; } // moved by typing
        schedule();
      };
      cell.model.sharedModel.changed.connect(onSource);
      cell.model.selections.changed.connect(onSelection);
      watched = { dispose: () => {
        cell.model.sharedModel.changed.disconnect(onSource);
        cell.model.selections.changed.disconnect(onSelection);
      } };
    }
    schedule();
  };
  tracker.activeCellChanged.connect(follow);
  tracker.currentChanged.connect(follow);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'fim-lsp-jupyterlab:plugin',
  description: 'Inline completions from fim-lsp',
  autoStart: true,
  requires: [ICompletionProviderManager, INotebookTracker],
  activate: (app: JupyterFrontEnd, manager: ICompletionProviderManager, tracker: INotebookTracker) => {
    const provider = new FimLspProvider();
    manager.registerInlineProvider(provider);
    watchCursor(tracker);
    app.commands.addCommand('fim-lsp:restart', {
      label: 'fim-lsp: Restart Server',
      execute: () => provider.restart(),
    });
    app.commands.addCommand('fim-lsp:status', {
      label: 'fim-lsp: Show Status',
      execute: async () => {
        const { data } = await call('status', { method: 'GET' });
        const lat = data.latency ?? {};
        Notification.info(`fim-lsp: ${data.model ?? '-'} · ${data.backend ?? '-'} on ${data.device ?? '-'} · ` +
          `${data.state ?? '?'} · p50 ${lat.p50_ms ?? '-'} ms${data.error ? ' · ' + data.error : ''}`, { autoClose: 10000 });
      },
    });
  },
};

export default plugin;
