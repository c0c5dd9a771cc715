// Drives JupyterLab in Debian's chromium: open a notebook, type in its second cell, read the
// inline suggestion from the DOM, press Tab, save. Prints one JSON object; screenshots go to `out`.
// usage: NODE_PATH=<playwright-core's node_modules> node jupyter_drive.js '<json config>'
//   config: { url, typed, out, timeoutMs }
const { drive } = require('./browser');

drive(async (page, cfg, result) => {
  await page.goto(cfg.url);
  const cells = page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell');
  await cells.nth(1).waitFor();
  // No kernel is needed to type; dismiss a kernel dialog if one comes up.
  await page.waitForTimeout(1000);
  if (await page.locator('.jp-Dialog').count()) await page.keyboard.press('Escape');
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
    await page.waitForTimeout(1500);
    result.invoked = (await ghost.allTextContents()).join('');
    await page.keyboard.press('Alt+BracketRight');
    for (let i = 0; i < 20 && (await ghost.allTextContents()).join('') === result.invoked; i++) {
      await page.waitForTimeout(250);
    }
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
  await page.keyboard.press('Control+S');
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${cfg.out}/accepted.png` });
});
