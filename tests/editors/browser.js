// Debian's chromium through playwright-core: one page, a JSON result on stdout, a screenshot on failure.
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'];

/** Run `steps(page, cfg, result)` in a fresh page; print `result` (with `error` if a step threw). */
async function drive(steps) {
  const cfg = JSON.parse(process.argv[2]);
  const result = {};
  let browser;
  try {
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.setDefaultTimeout(cfg.timeoutMs ?? 120000);
    try {
      await steps(page, cfg, result);
    } catch (err) {
      result.error = String(err);
      await page.screenshot({ path: `${cfg.out}/failure.png` }).catch(() => {});
    }
  } catch (err) {
    result.error = String(err);
  } finally {
    if (browser) await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

module.exports = { drive };
