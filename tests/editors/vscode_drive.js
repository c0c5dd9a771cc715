// Drives code-server in Debian's chromium as a person would: open a file, type, read the ghost
// text from the DOM, press Tab, save. Prints one JSON object; screenshots go to `out`.
// usage: NODE_PATH=<playwright-core's node_modules> node vscode_drive.js '<json config>'
//   config: { url, file, typed, statusPattern (a RegExp source), out, timeoutMs, expectNotification,
//             toggle (the file's language starts turned off: ask, see nothing, toggle it on, accept;
//             statusPattern then matches the "off" item and statusOnPattern the one naming the model),
//             cycle (after the first suggestion, show the next one, then accept that),
//             cursor ({line, column, other}: move the cursor there without typing, then open the file
//             `other`; the status report after each, as soon as it names that place) }
const { drive } = require('./browser');

const GHOST = '.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text';

/** Run a command from the command palette by its title. */
async function runCommand(page, title) {
  await page.keyboard.press('F1');
  await page.keyboard.type(title);
  await page.waitForSelector(`.quick-input-list .monaco-list-row[aria-label*="${title}"]`);
  await page.keyboard.press('Enter');
}

/** The extension's status report (fim-lsp: Show Status), as its notification reads. */
async function statusReport(page) {
  await runCommand(page, 'fim-lsp: Show Status');
  const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'accepted:' });
  await toast.first().waitFor();
  const text = (await toast.first().innerText()).trim();
  await page.keyboard.press('Escape');
  return text;
}

/** With the language off, typing and an explicit trigger show nothing and ask the server
 * nothing; the toggle command turns it on and the next trigger shows the server's suggestion. */
async function toggleOn(page, cfg, result, item) {
  result.statusOff = (await item.first().innerText()).trim();
  await page.keyboard.insertText(cfg.typed); // asks automatically where the language is on
  await runCommand(page, 'Trigger Inline Suggestion'); // and by hand
  await page.waitForTimeout(5000); // ample for the tiny model's answer (a few hundred ms)
  result.ghostWhileOff = await page.locator(GHOST).count();
  await page.screenshot({ path: `${cfg.out}/off.png` });
  result.reportWhileOff = await statusReport(page);
  await page.click('.monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
  await runCommand(page, 'fim-lsp: Toggle Inline Suggestions');
  const on = page.locator('.part.statusbar .statusbar-item', { hasText: new RegExp(cfg.statusOnPattern) });
  await on.first().waitFor();
  result.statusOn = (await on.first().innerText()).trim();
  await runCommand(page, 'Trigger Inline Suggestion');
  await page.locator(GHOST).first().waitFor();
  result.ghost = (await page.locator(GHOST).allTextContents()).join('\n');
  await page.keyboard.press('Tab');
  await page.locator(GHOST).first().waitFor({ state: 'detached' });
  await save(page);
}

async function typeAndAccept(page, cfg, result, item) {
  await page.keyboard.insertText(cfg.typed);
  const ghost = page.locator(GHOST);
  try {
    await ghost.first().waitFor({ timeout: 30000 });
  } catch (err) {
    // No automatic request came back as ghost text (a suggest widget or a lost trigger can hide
    // it): ask as a person would, with "Trigger Inline Suggestion".
    result.triggeredByHand = true;
    await page.keyboard.press('Escape');
    await runCommand(page, 'Trigger Inline Suggestion');
    await ghost.first().waitFor();
  }
  result.ghost = (await ghost.allTextContents()).join('\n');
  await page.screenshot({ path: `${cfg.out}/ghost.png` });
  if (cfg.cycle) {
    // The next suggestion: VS Code asks by hand (the server adds alternatives) and draws the second.
    result.automatic = result.ghost;
    await page.keyboard.press('Alt+BracketRight'); // Show Next Inline Suggestion (hidden from the palette)
    for (let i = 0; i < 40 && (await ghost.allTextContents()).join('\n') === result.automatic; i++) {
      await page.waitForTimeout(250);
    }
    await ghost.first().waitFor();
    result.ghost = (await ghost.allTextContents()).join('\n');
    await page.screenshot({ path: `${cfg.out}/cycled.png` });
  }
  await page.keyboard.press('Tab');
  await ghost.first().waitFor({ state: 'detached' });
  await save(page);
  // The status bar refreshes after a completion and then names its latency.
  const timed = item.filter({ hasText: /\d+ ms/ });
  await timed.first().waitFor();
  result.statusAfter = (await timed.first().innerText()).trim();
  await page.screenshot({ path: `${cfg.out}/accepted.png` });
  // The extension's status command, from the command palette.
  result.statusReport = await statusReport(page);
}

/** Show Status until its report matches `pattern` (the server has taken the hint it names); the
 * last report either way. Each read clears the notifications, so the next one is read fresh. */
async function reportMatching(page, pattern, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  let text = '';
  while (Date.now() < deadline) {
    text = await statusReport(page);
    await runCommand(page, 'Notifications: Clear All Notifications');
    if (pattern.test(text)) break;
    await page.waitForTimeout(250); // the poll's pace; what ends the wait is the report itself
  }
  return text;
}

/** Move the cursor without typing, then switch to another file: each sends a cursor hint, which the
 * server's status (the extension's Show Status report) names once taken. */
async function moveAndSwitch(page, cfg, result) {
  const { line, column, other } = cfg.cursor;
  result.reportBefore = await statusReport(page);
  await runCommand(page, 'Notifications: Clear All Notifications');
  await page.click('.monaco-editor .view-lines');
  await page.keyboard.press('Control+Home');
  for (let i = 1; i < line; i++) await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Home');
  for (let i = 1; i < column; i++) await page.keyboard.press('ArrowRight');
  result.reportMoved = await reportMatching(page, new RegExp(`at Ln ${line}, Col ${column}\\b`));
  const entry = page.locator(`.explorer-folders-view .monaco-list-row[aria-label*="${other}"]`);
  await entry.first().click();
  await page.waitForSelector(`.tab.active[aria-label*="${other}"]`);
  result.reportSwitched = await reportMatching(page, new RegExp(`last in ${other.replace('.', '\\.')} at`));
  await page.screenshot({ path: `${cfg.out}/switched.png` });
}

async function expectBrokenServer(page, cfg, result) {
  const toast = page.locator('.notifications-toasts .notification-toast', { hasText: cfg.expectNotification });
  await toast.first().waitFor();
  result.notificationText = (await toast.first().innerText()).trim();
  await page.keyboard.type(cfg.typed);
  await save(page);
  await page.waitForTimeout(3000); // time for any restart attempt to show itself
  result.notifications = await page.locator('.notifications-toasts .notification-toast').count();
  await page.screenshot({ path: `${cfg.out}/broken.png` });
}

async function save(page) {
  await page.keyboard.press('Control+S');
  await page.waitForSelector('.tab.active:not(.dirty)');
}

drive(async (page, cfg, result) => {
  await page.goto(cfg.url);
  await page.waitForSelector('.monaco-workbench .part.statusbar');
  // Open the file from the Explorer.
  const entry = page.locator(`.explorer-folders-view .monaco-list-row[aria-label*="${cfg.file}"]`);
  await entry.first().click();
  await page.waitForSelector(`.tab.active[aria-label*="${cfg.file}"]`);
  await page.waitForSelector('.monaco-editor .view-lines');
  // The extension's status bar item names the model once the server has loaded it (or says the
  // file's language is off).
  const item = page.locator('.part.statusbar .statusbar-item', { hasText: new RegExp(cfg.statusPattern) });
  await item.first().waitFor();
  result.statusBefore = (await item.first().innerText()).trim();
  await page.click('.monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
  if (cfg.expectNotification) {
    await expectBrokenServer(page, cfg, result);
  } else if (cfg.cursor) {
    await moveAndSwitch(page, cfg, result);
  } else if (cfg.toggle) {
    await toggleOn(page, cfg, result, item);
  } else {
    await typeAndAccept(page, cfg, result, item);
  }
});
