// Drives code-server in Debian's chromium as a person would: open a file, type, read the ghost
// text from the DOM, press Tab, save. Prints one JSON object; screenshots go to `out`.
// usage: NODE_PATH=<playwright-core's node_modules> node vscode_drive.js '<json config>'
//   config: { url, file, typed, statusPattern (a RegExp source), out, timeoutMs, expectNotification }
const { drive } = require('./browser');

async function typeAndAccept(page, cfg, result, item) {
  await page.keyboard.insertText(cfg.typed);
  const ghost = page.locator('.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text');
  try {
    await ghost.first().waitFor({ timeout: 30000 });
  } catch (err) {
    // No automatic request came back as ghost text (a suggest widget or a lost trigger can hide
    // it): ask as a person would, with "Trigger Inline Suggestion" (Alt+\).
    result.triggeredByHand = true;
    await page.keyboard.press('Escape');
    await page.keyboard.press('Alt+Backslash');
    await ghost.first().waitFor();
  }
  result.ghost = (await ghost.allTextContents()).join('\n');
  await page.screenshot({ path: `${cfg.out}/ghost.png` });
  await page.keyboard.press('Tab');
  await ghost.first().waitFor({ state: 'detached' });
  await save(page);
  await page.waitForTimeout(500); // the status refresh after a completion
  result.statusAfter = (await item.first().innerText()).trim();
  await page.screenshot({ path: `${cfg.out}/accepted.png` });
  // The extension's status command, from the command palette.
  await page.keyboard.press('F1');
  await page.keyboard.type('fim-lsp: Show Status');
  await page.waitForSelector('.quick-input-list .monaco-list-row[aria-label*="fim-lsp: Show Status"]');
  await page.keyboard.press('Enter');
  const toast = page.locator('.notifications-toasts .notification-toast', { hasText: 'accepted:' });
  await toast.first().waitFor();
  result.statusReport = (await toast.first().innerText()).trim();
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
  // The extension's status bar item names the model once the server has loaded it.
  const item = page.locator('.part.statusbar .statusbar-item', { hasText: new RegExp(cfg.statusPattern) });
  await item.first().waitFor();
  result.statusBefore = (await item.first().innerText()).trim();
  await page.click('.monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
  if (cfg.expectNotification) {
    await expectBrokenServer(page, cfg, result);
  } else {
    await typeAndAccept(page, cfg, result, item);
  }
});
