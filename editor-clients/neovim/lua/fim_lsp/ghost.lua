--- Ghost text for Neovim 0.11, which has no vim.lsp.inline_completion.
---
--- After each insert-mode edit (debounced) the buffer's fim-lsp client is asked for
--- `textDocument/inlineCompletion` at the cursor. The first item is drawn as an inline extmark
--- (further lines as virtual lines) and kept while the cursor stays where it was asked for.
--- Typing the suggestion's next characters keeps its rest drawn at once (the server's answer for the
--- new position then replaces it); moving, leaving insert mode, or any other edit clears it.
--- Accepting replaces the item's range with its text and runs its command (`fim-lsp.accepted`) on
--- the server; accepting a word or a line inserts that much and keeps the rest drawn.
local M = {}

local ns = vim.api.nvim_create_namespace("fim_lsp_ghost")
local INVOKED, AUTOMATIC = 1, 2 -- InlineCompletionTriggerKind

---@class fim_lsp.Suggestion
---@field client_id integer
---@field row integer       0-based cursor row the suggestion was made for
---@field col integer       byte column of the cursor
---@field range integer[]   {start_row, start_col, end_row, end_col} in bytes, replaced on accept
---@field text string       the item's full insert text
---@field ghost string      the part of `text` not yet typed, as drawn
---@field command table?    LSP command to run after accepting
---@field alternatives fim_lsp.Suggestion[]? every suggestion of the answer (cycled with M.cycle)
---@field index integer?    which of them is drawn
---@field tick integer      the buffer's changedtick when drawn
---@field after string      the cursor line's text after the cursor when drawn
---@field extmark integer

---@type table<integer, fim_lsp.Suggestion>
local shown = {}
---@type table<integer, {timer: uv.uv_timer_t, request: integer?, client_id: integer?}>
local pending = {}

local function cursor(buf)
  local win = vim.fn.bufwinid(buf)
  if win == -1 then return nil end
  local pos = vim.api.nvim_win_get_cursor(win)
  return pos[1] - 1, pos[2]
end

--- Hide the buffer's suggestion; true when one was visible.
function M.clear(buf)
  local s = shown[buf]
  if not s then return false end
  shown[buf] = nil
  pcall(vim.api.nvim_buf_del_extmark, buf, ns, s.extmark)
  return true
end

--- The suggestion currently drawn in a buffer (nil when none): its text and what is drawn.
function M.current(buf)
  local s = shown[buf == 0 and vim.api.nvim_get_current_buf() or buf]
  return s and {
    text = s.text, ghost = s.ghost, row = s.row, col = s.col,
    index = s.index or 1, count = s.alternatives and #s.alternatives or 1,
  } or nil
end

local function byte_col(buf, position, encoding)
  return vim.lsp.util._get_line_byte_from_position(buf, position, encoding)
end

--- Draw `s` (a fim_lsp.Suggestion without extmark, tick and after) at its row and column.
local function draw(buf, s)
  M.clear(buf)
  local lines = vim.split(s.ghost, "\n", { plain = true })
  local hl = M.hl_group
  local virt_lines = {}
  for i = 2, #lines do virt_lines[#virt_lines + 1] = { { lines[i], hl } } end
  s.tick = vim.api.nvim_buf_get_changedtick(buf)
  s.after = vim.api.nvim_buf_get_lines(buf, s.row, s.row + 1, true)[1]:sub(s.col + 1)
  s.extmark = vim.api.nvim_buf_set_extmark(buf, ns, s.row, s.col, {
    virt_text = { { lines[1], hl } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
  shown[buf] = s
end

--- `s`'s rest after its first `n` bytes were inserted, anchored at (row, col): the bytes its range
--- replaces after the cursor (closers the suggestion supplies) stay the same.
local function rest_of(s, n, row, col)
  local tail = s.range[3] == s.row and math.max(0, s.range[4] - s.col) or 0
  local rest = s.ghost:sub(n + 1)
  return {
    client_id = s.client_id, row = row, col = col, range = { row, col, row, col + tail },
    text = rest, ghost = rest, command = s.command,
  }
end

--- An inlineCompletion item as a suggestion at (row, col), or nil when it does not fit there.
local function suggestion_of(buf, client, item, row, col)
  local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
  if type(text) ~= "string" or text == "" then return nil end
  local range = { row, col, row, col }
  if item.range then
    local s, e = item.range.start, item.range["end"]
    range = { s.line, byte_col(buf, s, client.offset_encoding), e.line, byte_col(buf, e, client.offset_encoding) }
  end
  -- The text usually repeats what was typed since range start; draw only the rest.
  if range[1] ~= row or range[2] > col then return nil end
  local typed = vim.api.nvim_buf_get_text(buf, row, range[2], row, col, {})[1]
  if text:sub(1, #typed) ~= typed or #text == #typed then return nil end
  return {
    client_id = client.id, row = row, col = col, range = range, text = text, ghost = text:sub(#typed + 1),
    command = item.command,
  }
end

--- Draw the `index`-th of `alternatives` (wrapping round; 0 and below count from the end),
--- keeping them all to cycle through.
local function draw_alternative(buf, alternatives, index)
  index = (index - 1) % #alternatives + 1
  draw(buf, vim.tbl_extend("force", alternatives[index], { alternatives = alternatives, index = index }))
end

--- Draw the `index`-th suggestion of an inlineCompletion answer; clear what is drawn when none fits.
local function show(buf, client, result, row, col, index)
  local alternatives = {}
  for _, item in ipairs(result and (result.items or result) or {}) do
    alternatives[#alternatives + 1] = suggestion_of(buf, client, item, row, col)
  end
  if #alternatives == 0 then return M.clear(buf) end
  draw_alternative(buf, alternatives, index or 1)
end

--- After an edit: when it typed the drawn suggestion's next characters on its line (and left the
--- rest of the line as it was), draw what is left at the cursor at once; true when it did.
function M.follow(buf)
  local s = shown[buf]
  local row, col = cursor(buf)
  if not s or row ~= s.row then return false end
  if vim.api.nvim_buf_get_changedtick(buf) == s.tick then return col == s.col end
  local n = col - s.col
  if n <= 0 or n >= #s.ghost then return false end
  local line = vim.api.nvim_buf_get_lines(buf, row, row + 1, true)[1]
  if line:sub(s.col + 1, col) ~= s.ghost:sub(1, n) or line:sub(col + 1) ~= s.after then return false end
  draw(buf, rest_of(s, n, row, col))
  return true
end

--- Ask the server now for a suggestion at the cursor (cancels the previous question). `invoked`:
--- the user asked by hand (the answer then holds alternatives); `index`: which suggestion to draw.
function M.request(buf, invoked, index)
  local client = require("fim_lsp").client(buf)
  local row, col = cursor(buf)
  if not client or not client.initialized or not row then return end
  if not vim.api.nvim_get_mode().mode:match("^i") then return end
  local p = pending[buf]
  if p.request then
    local old = vim.lsp.get_client_by_id(p.client_id)
    if old then old:cancel_request(p.request) end
  end
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local params = vim.lsp.util.make_position_params(vim.fn.bufwinid(buf), client.offset_encoding)
  params.context = { triggerKind = invoked and INVOKED or AUTOMATIC }
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    if p.request == id then p.request = nil end
    -- An answer already on its way when ghost text was turned off (a cancel cannot stop it).
    if pending[buf] ~= p then return end
    if err or not vim.api.nvim_buf_is_valid(buf) then return end
    -- Drop answers overtaken by typing or cursor moves.
    local r, c = cursor(buf)
    if vim.api.nvim_buf_get_changedtick(buf) ~= tick or r ~= row or c ~= col then return end
    if not vim.api.nvim_get_mode().mode:match("^i") then return end
    show(buf, client, result, row, col, index)
  end, buf)
  if ok then p.request, p.client_id = id, client.id end
end

--- Draw the next (`step` 1) or previous (-1) suggestion. With only one at hand, ask the server by
--- hand for its alternatives and draw the one `step` leads to. False when not in insert mode.
function M.cycle(buf, step)
  local s = shown[buf]
  local row, col = cursor(buf)
  if s and s.alternatives and #s.alternatives > 1 and row == s.row and col == s.col then
    draw_alternative(buf, s.alternatives, s.index + step)
    return true
  end
  if not pending[buf] or not vim.api.nvim_get_mode().mode:match("^i") then return false end
  pending[buf].timer:stop()
  M.request(buf, true, step > 0 and 2 or 0) -- 0: the last
  return true
end

-- A word: an optional line break and blanks, then a run of word characters (bytes of multi-byte
-- characters count as word characters) or a run of other visible characters.
local WORD = "^\n?[ \t]*[%w_\128-\255]+"
local PUNCTUATION = "^\n?[ \t]*[^%w_%s\128-\255]+"

--- The part of `ghost` that accepting a "word" or a "line" inserts: a line is the text up to the
--- next line break, or at a line break, the break and the line after it.
function M.next_part(ghost, kind)
  if kind == "line" then
    local stop = ghost:find("\n", ghost:sub(1, 1) == "\n" and 2 or 1, true)
    return stop and ghost:sub(1, stop - 1) or ghost
  end
  return ghost:match(WORD) or ghost:match(PUNCTUATION) or ghost
end

--- Insert the visible suggestion, or with `kind` ("word" or "line") its next word or line and keep
--- the rest drawn; false when none was visible.
function M.accept(buf, kind)
  local s = shown[buf]
  if not s then return false end
  local part = kind and M.next_part(s.ghost, kind) or s.ghost
  if #part < #s.ghost then
    local lines = vim.split(part, "\n", { plain = true })
    M.clear(buf)
    vim.api.nvim_buf_set_text(buf, s.row, s.col, s.row, s.col, lines)
    local row = s.row + #lines - 1
    local col = (#lines == 1 and s.col or 0) + #lines[#lines]
    vim.api.nvim_win_set_cursor(vim.fn.bufwinid(buf), { row + 1, col })
    draw(buf, rest_of(s, #part, row, col))
    return true
  end
  M.clear(buf)
  local lines = vim.split(s.text, "\n", { plain = true })
  local r = s.range
  vim.api.nvim_buf_set_text(buf, r[1], r[2], r[3], r[4], lines)
  local end_row = r[1] + #lines - 1
  local end_col = (#lines == 1 and r[2] or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(vim.fn.bufwinid(buf), { end_row + 1, end_col })
  local client = vim.lsp.get_client_by_id(s.client_id)
  if client and s.command then
    client:request("workspace/executeCommand",
      { command = s.command.command, arguments = s.command.arguments }, function() end, buf)
  end
  return true
end

--- Turn ghost text on for a buffer.
function M.enable(buf, config)
  if pending[buf] then return end
  M.hl_group = config.hl_group
  pending[buf] = { timer = assert(vim.uv.new_timer()) }
  local group = vim.api.nvim_create_augroup("fim_lsp_ghost_" .. buf, { clear = true })
  vim.api.nvim_create_autocmd("TextChangedI", {
    group = group,
    buffer = buf,
    callback = function()
      if not M.follow(buf) then M.clear(buf) end
      pending[buf].timer:start(config.debounce_ms, 0, vim.schedule_wrap(function() M.request(buf) end))
    end,
  })
  -- An edit while a completion menu is open.
  vim.api.nvim_create_autocmd("TextChangedP", {
    group = group,
    buffer = buf,
    callback = function() if not M.follow(buf) then M.clear(buf) end end,
  })
  -- Typing can start before the server has answered `initialize`; ask once it has.
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group,
    buffer = buf,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      -- The client counts as attached only after the LspAttach callbacks have run.
      if client and client.name == "fim-lsp" then vim.schedule(function() M.request(buf) end) end
    end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    buffer = buf,
    callback = function()
      -- An edit moves the cursor too: TextChangedI (which comes next) decides about those.
      local s, row, col = shown[buf], cursor(buf)
      if s and (row ~= s.row or col ~= s.col) and vim.api.nvim_buf_get_changedtick(buf) == s.tick then
        M.clear(buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = buf,
    callback = function()
      pending[buf].timer:stop()
      M.clear(buf)
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", { group = group, buffer = buf, callback = function() M.disable(buf) end })
end

--- Turn ghost text off for a buffer: no more requests (the one in flight is cancelled), none drawn.
function M.disable(buf)
  local p = pending[buf]
  if not p then return end
  pending[buf] = nil
  p.timer:stop()
  p.timer:close()
  if p.request then
    local client = vim.lsp.get_client_by_id(p.client_id)
    if client then client:cancel_request(p.request) end
  end
  M.clear(buf)
  pcall(vim.api.nvim_del_augroup_by_name, "fim_lsp_ghost_" .. buf)
end

--- Whether ghost text is on for a buffer.
function M.enabled(buf)
  return pending[buf] ~= nil
end

return M
