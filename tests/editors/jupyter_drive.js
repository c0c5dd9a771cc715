// Drives JupyterLab in Debian's chromium: open a notebook, type in its second cell, read the
// inline suggestion from the DOM, press Tab, save. Prints one JSON object; screenshots go to `out`.
// usage: NODE_PATH=<playwright-core's node_modules> node jupyter_drive.js '<json config>'
//   config: { url, typed, out, timeoutMs, cycle,
//             cursor ({status, token}: instead of typing, put the cursor at line 2, column 5 of the first
//             cell without typing, then focus the second cell; after each, the server's `ahead` status
//             (polled at `status`) once its newest hint is that place) }
const { drive } = require('./browser');

/** Poll the server's status (GET `cfg.status`) until `done(ahead)`; that `ahead` section, or the last
 * one read when it never comes (the test then says what was seen). */
async function aheadWhen(page, cfg, done, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  let ahead = null;
  while (Date.now() < deadline) {
    const response = await fetch(cfg.cursor.status, { headers: { Authorization: `token ${cfg.cursor.token}` } });
    ahead = (await response.json()).ahead ?? null;
    if (ahead && done(ahead)) break;
    await page.waitForTimeout(250); // the poll's pace; what ends the wait is the status itself
  }
  return ahead;
}

/** Wait for the inline completer's counter ("1/3": the suggestion drawn, of how many) to match
 * `pattern`; it is in the page whether or not the completer's widget is showing. */
async function suggestionCounter(page, pattern) {
  await page.waitForFunction((source) => new RegExp(source).test(
    document.querySelector('.jp-InlineCompleter')?.firstElementChild?.textContent ?? ''), pattern.source);
}

/** Move the cursor in the first cell without typing, then focus the second: each sends a hint. */
async function moveAndFocus(page, cfg, result, cells) {
  result.aheadBefore = await aheadWhen(page, cfg, () => true);
  await cells.nth(0).locator('.cm-content').click();
  await page.keyboard.press('Control+Home');
  await page.keyboard.press('ArrowDown');
  for (let i = 0; i < 4; i++) await page.keyboard.press('ArrowRight');
  const at = (h, line, character) => h && h.uri.includes('#cell-') && h.line === line && h.character === character;
  result.aheadMoved = await aheadWhen(page, cfg, (a) => at(a.last_hint, 1, 4));
  await cells.nth(1).locator('.cm-content').click();
  const first = result.aheadMoved?.last_hint?.uri;
  result.aheadFocused = await aheadWhen(page, cfg, (a) => at(a.last_hint, 0, 0) && a.last_hint.uri !== first);
  await page.screenshot({ path: `${cfg.out}/focused.png` });
}

drive(async (page, cfg, result) => {
  await page.goto(cfg.url);
  const cells = page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell');
  // No kernel is needed to type; a kernel dialog, whenever it comes up, is dismissed before the
  // next action.
  await page.addLocatorHandler(page.locator('.jp-Dialog'), async () => { await page.keyboard.press('Escape'); });
  await cells.nth(1).waitFor();
  if (cfg.cursor) {
    await moveAndFocus(page, cfg, result, cells);
    return;
  }
  const editor = cells.nth(1).locator('.cm-content');
  await editor.click();
  await page.keyboard.press('Control+End');
  await page.keyboard.insertText(cfg.typed);
  const ghost = cells.nth(1).locator('.jp-GhostText');
  await ghost.first().waitFor();
  // The completer may replace its first answer with a later one: read the ghost once it is stable.
  let shown = '';
  for (let i = 0; i < 40; i++) {
    const now = (await ghost.allTextContents()).join('');
    if (now && now === shown) break;
    shown = now;
    await page.waitForTimeout(750);
  }
  result.ghost = shown;
  await page.screenshot({ path: `${cfg.out}/ghost.png` });
  if (cfg.cycle) {
    // Ask by hand (Alt+\): the provider is invoked and answers with alternatives; Alt+] draws the next.
    result.automatic = shown;
    await page.keyboard.press('Alt+Backslash');
    await suggestionCounter(page, /^1\/([2-9]|\d\d+)$/); // the answer by hand, with its alternatives
    result.invoked = (await ghost.allTextContents()).join('');
    await page.keyboard.press('Alt+BracketRight');
    await suggestionCounter(page, /^2\//);
    shown = (await ghost.allTextContents()).join('');
    result.ghost = shown;
    await page.screenshot({ path: `${cfg.out}/cycled.png` });
  }
  await page.keyboard.press('Tab');
  // After Tab the next suggestion may already show as ghost text inside the editor's DOM: read the
  // cell's own text, each line without its ghost widgets.
  const cellText = () => editor.evaluate((el) => Array.from(el.querySelectorAll('.cm-line'), (line) => {
    const copy = line.cloneNode(true);
    copy.querySelectorAll('.jp-GhostText').forEach((g) => g.remove());
    return copy.textContent;
  }).join('\n'));
  for (let i = 0; i < 60 && !(await cellText()).includes(shown.split('\n')[0]); i++) {
    await page.waitForTimeout(500);
  }
  result.cellText = await cellText();
  const tab = '#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current';
  await page.waitForSelector(`${tab}.jp-mod-dirty`); // the accepted text made the notebook unsaved
  await page.keyboard.press('Control+S');
  // Saved: the notebook's tab loses its "dirty" mark once the file is written.
  await page.waitForSelector(`${tab}:not(.jp-mod-dirty)`);
  await page.screenshot({ path: `${cfg.out}/accepted.png` });
});
