--- Cursor hints: tell the server where the cursor rests, so it prefills the prompt there while idle.
---
--- LSP has no cursor notification; fim-lsp takes `fim-lsp/cursor` `{textDocument = {uri}, position}`
--- (a hint only: it never changes a document). Sent debounced when the cursor moves without an edit
--- (an edit sends its own completion request), and when a buffer is entered or the server attaches.
local M = {}

local NOTIFICATION = "fim-lsp/cursor"
---@type table<integer, {timer: uv.uv_timer_t, tick: integer}>
local watched = {}

local function send(buf)
  local client = require("fim_lsp").client(buf)
  local win = vim.fn.bufwinid(buf)
  if not client or not client.initialized or win == -1 or not require("fim_lsp").enabled(buf) then return end
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  client:notify(NOTIFICATION, { textDocument = params.textDocument, position = params.position })
end

--- Hint (after `delay_ms`) unless the buffer changed since the cursor last moved: that was typing.
local function schedule(buf, delay_ms, moved_by_edit)
  local w = watched[buf]
  if not w then return end
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  if moved_by_edit and tick ~= w.tick then
    w.tick = tick
    w.timer:stop()
    return
  end
  w.tick = tick
  w.timer:start(delay_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(buf) then send(buf) end
  end))
end

--- Send hints for a buffer.
function M.enable(buf, config)
  if watched[buf] then return end
  local delay = config.cursor_hint_ms or 150
  watched[buf] = { timer = assert(vim.uv.new_timer()), tick = vim.api.nvim_buf_get_changedtick(buf) }
  local group = vim.api.nvim_create_augroup("fim_lsp_cursor_" .. buf, { clear = true })
  vim.api.nvim_create_autocmd({ "CursorMoved", "CursorMovedI" }, {
    group = group, buffer = buf, callback = function() schedule(buf, delay, true) end,
  })
  vim.api.nvim_create_autocmd({ "BufEnter", "WinEnter" }, {
    group = group, buffer = buf, callback = function() schedule(buf, delay, false) end,
  })
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group, buffer = buf,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == "fim-lsp" then vim.schedule(function() schedule(buf, delay, false) end) end
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", { group = group, buffer = buf, callback = function() M.disable(buf) end })
end

--- Stop sending hints for a buffer.
function M.disable(buf)
  local w = watched[buf]
  if not w then return end
  watched[buf] = nil
  w.timer:stop()
  w.timer:close()
  pcall(vim.api.nvim_del_augroup_by_name, "fim_lsp_cursor_" .. buf)
end

return M
