--- fim-lsp for Neovim: starts `fim-lsp serve` for code buffers and shows its inline completions.
---
--- On Neovim >= 0.12 the native `vim.lsp.inline_completion` draws and accepts suggestions; on
--- 0.11 `fim_lsp.ghost` does the same with extmarks. The server is started with `vim.lsp.start`
--- and never restarted behind the user's back: a missing binary or a crash gives one message and
--- the editor carries on; `:FimLspRestart` starts it again.
local M = {}

---@class fim_lsp.Config
M.defaults = {
  --- Command that starts the server (first element must be an executable).
  cmd = { "fim-lsp", "serve" },
  --- Filetypes to attach to; nil means every buffer that holds a file.
  filetypes = nil,
  --- Files or folders that mark a project root (the server gets one per root).
  root_markers = { ".git", "pyproject.toml", "package.json" },
  --- Sent as initializationOptions and again with workspace/didChangeConfiguration.
  --- Keys: model, backend, device, dtype, max_new_tokens, temperature, multiline, ...
  server = {},
  --- Insert-mode key that accepts a visible suggestion (falls through to the key otherwise).
  accept_key = "<Tab>",
  --- Insert-mode keys that accept the suggestion's next word / next line and keep the rest drawn
  --- (0.11 ghost text, or `native = false`), or false.
  accept_word_key = "<M-Right>",
  accept_line_key = "<M-C-Right>",
  --- Insert-mode keys that draw the next / previous suggestion; the first press asks the server by
  --- hand, which answers with alternatives (0.11 ghost text, or `native = false`), or false.
  next_key = "<M-]>",
  prev_key = "<M-[>",
  --- Insert-mode key that hides a visible suggestion, or false.
  dismiss_key = "<C-]>",
  --- Milliseconds to wait after the last keystroke before asking (0.11 ghost text only).
  debounce_ms = 60,
  --- Milliseconds the cursor rests without typing before the server is told (`fim-lsp/cursor`).
  cursor_hint_ms = 150,
  --- Highlight group of the ghost text (0.11 ghost text only).
  hl_group = "Comment",
  --- Use Neovim's own vim.lsp.inline_completion when it exists (>= 0.12).
  native = true,
}

M.config = vim.deepcopy(M.defaults)
local NAME = "fim-lsp"
local state = { failure = nil, warned = false, stopping = false, last_status = nil }

local function notify(msg, level)
  -- Scheduled: an error raised inside a FileType autocmd would read as a plugin crash.
  vim.schedule(function() vim.notify("fim-lsp: " .. msg, level or vim.log.levels.INFO) end)
end

--- Whether this Neovim has the native inline completion module.
function M.uses_native()
  return M.config.native and vim.lsp.inline_completion ~= nil
end

--- The running fim-lsp client for a buffer, if any.
function M.client(buf)
  return vim.lsp.get_clients({ bufnr = buf or 0, name = NAME })[1]
end

local function fail_once(reason, quiet)
  state.failure = reason
  if not state.warned and not quiet then
    state.warned = true
    notify(reason .. "; completions off until :FimLspRestart", vim.log.levels.ERROR)
  end
end

local function feed(key)
  vim.api.nvim_feedkeys(vim.keycode(key), "n", false)
end

local function map_keys(buf)
  local cfg = M.config
  if cfg.accept_key then
    vim.keymap.set("i", cfg.accept_key, function()
      if M.uses_native() then
        if not vim.lsp.inline_completion.get({ bufnr = buf }) then feed(cfg.accept_key) end
      elseif not require("fim_lsp.ghost").accept(buf) then
        feed(cfg.accept_key)
      end
    end, { buffer = buf, desc = "fim-lsp: accept the suggestion" })
  end
  if not M.uses_native() then
    for kind, key in pairs({ word = cfg.accept_word_key, line = cfg.accept_line_key }) do
      if key then
        vim.keymap.set("i", key, function()
          if not require("fim_lsp.ghost").accept(buf, kind) then feed(key) end
        end, { buffer = buf, desc = ("fim-lsp: accept the suggestion's next %s"):format(kind) })
      end
    end
    for step, key in pairs({ [1] = cfg.next_key, [-1] = cfg.prev_key }) do
      if key then
        vim.keymap.set("i", key, function()
          if not require("fim_lsp.ghost").cycle(buf, step) then feed(key) end
        end, { buffer = buf, desc = step > 0 and "fim-lsp: next suggestion" or "fim-lsp: previous suggestion" })
      end
    end
  end
  if cfg.dismiss_key and not M.uses_native() then
    vim.keymap.set("i", cfg.dismiss_key, function()
      if not require("fim_lsp.ghost").clear(buf) then feed(cfg.dismiss_key) end
    end, { buffer = buf, desc = "fim-lsp: hide the suggestion" })
  end
end

--- Start (or reuse) the server for a buffer and turn suggestions on there.
function M.attach(buf)
  buf = (buf == nil or buf == 0) and vim.api.nvim_get_current_buf() or buf
  if state.failure or vim.bo[buf].buftype ~= "" or vim.api.nvim_buf_get_name(buf) == "" then return end
  local cfg = M.config
  if vim.fn.executable(cfg.cmd[1]) ~= 1 then
    return fail_once(("server command '%s' not found"):format(cfg.cmd[1]))
  end
  local root = vim.fs.root(buf, cfg.root_markers) or vim.fs.dirname(vim.api.nvim_buf_get_name(buf))
  local settings = next(cfg.server) and cfg.server or vim.empty_dict() -- an object on the wire, never []
  local client_id = vim.lsp.start({
    name = NAME,
    cmd = cfg.cmd,
    root_dir = root,
    init_options = settings,
    settings = { ["fim-lsp"] = settings },
    on_exit = function(code, signal)
      if state.stopping or (code == 0 and signal == 0) then return end
      -- Neovim itself reports the exit and where the log is; one message is enough.
      vim.schedule(function() fail_once(("server exited (code %d, signal %d)"):format(code, signal), true) end)
    end,
  }, { bufnr = buf })
  if not client_id then return fail_once("the server could not be started (see :checkhealth vim.lsp)") end
  if M.uses_native() then
    vim.lsp.inline_completion.enable(true, { bufnr = buf })
  else
    require("fim_lsp.ghost").enable(buf, cfg)
  end
  require("fim_lsp.cursor").enable(buf, cfg)
  map_keys(buf)
end

--- Stop every fim-lsp client, forget past failures, and attach the loaded buffers again.
function M.restart()
  state.stopping = true
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do client:stop(true) end
  state.failure, state.warned = nil, false
  vim.defer_fn(function()
    state.stopping = false
    for _, buf in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(buf) and M.wants(buf) then M.attach(buf) end
    end
  end, 200)
end

--- Whether suggestions are on in a buffer.
function M.enabled(buf)
  buf = (buf == nil or buf == 0) and vim.api.nvim_get_current_buf() or buf
  if M.uses_native() then return vim.lsp.inline_completion.is_enabled({ bufnr = buf }) end
  return require("fim_lsp.ghost").enabled(buf)
end

--- Turn suggestions off or on in a buffer (`:FimLspToggle`); whether they are on now.
function M.toggle(buf)
  buf = (buf == nil or buf == 0) and vim.api.nvim_get_current_buf() or buf
  local on = not M.enabled(buf)
  if M.uses_native() then
    vim.lsp.inline_completion.enable(on, { bufnr = buf })
  elseif on then
    require("fim_lsp.ghost").enable(buf, M.config)
  else
    require("fim_lsp.ghost").disable(buf)
  end
  notify(("suggestions %s in this buffer"):format(on and "on" or "off"))
  return on
end

--- Whether setup's filetypes cover this buffer.
function M.wants(buf)
  local fts = M.config.filetypes
  return fts == nil or vim.tbl_contains(fts, vim.bo[buf].filetype)
end

--- Ask the server for `fim-lsp/status`; `on_result(status_table)` runs when it answers.
function M.status(on_result)
  local client = M.client(0) or vim.lsp.get_clients({ name = NAME })[1]
  if not client then
    notify(state.failure or "no server is running for this buffer", vim.log.levels.WARN)
    return
  end
  client:request("fim-lsp/status", {}, function(err, result)
    if err then return notify("status failed: " .. err.message, vim.log.levels.ERROR) end
    state.last_status = result
    if on_result then return on_result(result) end
    notify(vim.inspect(result))
  end)
end

--- A short line for the statusline: model loading progress, else the model name.
function M.statusline()
  if state.failure then return "fim-lsp: off" end
  local client = M.client(0)
  if not client then return "" end
  local progress = vim.lsp.status()
  if progress ~= "" then return "fim-lsp: " .. progress end
  local s = state.last_status
  return s and ("fim-lsp: %s (%s)"):format(s.model or "?", s.backend or "?") or "fim-lsp"
end

--- The reason suggestions are off, or nil when they are on.
function M.failure()
  return state.failure
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  assert(type(M.config.cmd) == "table" and #M.config.cmd > 0, "fim_lsp.setup: cmd must be a non-empty list")
  local group = vim.api.nvim_create_augroup("fim_lsp", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes or "*",
    callback = function(ev) M.attach(ev.buf) end,
  })
  vim.api.nvim_create_user_command("FimLspRestart", M.restart, { desc = "Restart the fim-lsp server" })
  vim.api.nvim_create_user_command("FimLspToggle", function() M.toggle(0) end,
    { desc = "Turn fim-lsp suggestions off or on in this buffer" })
  vim.api.nvim_create_user_command("FimLspStatus", function() M.status() end,
    { desc = "Show the fim-lsp server's model, backend and latency" })
  vim.api.nvim_create_user_command("FimLspLog", function() vim.cmd.tabedit(vim.lsp.get_log_path()) end,
    { desc = "Open the LSP log (the server's stderr lands there)" })
  -- Buffers already open when setup runs.
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.bo[buf].filetype ~= "" and M.wants(buf) then M.attach(buf) end
  end
end

return M
