-- Headless Neovim 0.11 drives `fim-lsp serve`: start it with vim.lsp.start, type into a Python
-- buffer (each key an incremental didChange), then ask for textDocument/inlineCompletion through
-- vim.lsp.buf_request_sync. Everything the test checks is written as JSON to $FIM_NVIM_OUT.
local out_path = os.getenv("FIM_NVIM_OUT")
local result = { steps = {} }

local function finish(code)
  local f = assert(io.open(out_path, "w"))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd((code == 0) and "qall!" or ("cquit " .. code))
end

local ok, err = pcall(function()
  vim.cmd.edit(os.getenv("FIM_NVIM_FILE"))
  local buf = vim.api.nvim_get_current_buf()
  local client_id = vim.lsp.start({
    name = "fim-lsp",
    cmd = vim.split(os.getenv("FIM_NVIM_CMD"), "\t"),
    root_dir = vim.fs.dirname(vim.api.nvim_buf_get_name(buf)),
    init_options = { maxNewTokens = 8 },
  })
  assert(client_id, "vim.lsp.start returned no client")
  local client = vim.lsp.get_client_by_id(client_id)
  assert(vim.wait(60000, function() return client.initialized end, 50), "the server never initialized")
  result.offset_encoding = client.offset_encoding
  result.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil

  local ready = vim.wait(120000, function()
    local answer = client:request_sync("fim-lsp/status", {}, 5000, buf)
    return answer and answer.result and answer.result.state == "ready"
  end, 100)
  assert(ready, "the model never became ready")

  -- type `total = ` at the start of the last line, one key at a time
  local row = vim.api.nvim_buf_line_count(buf) - 1
  local col = 0
  for key in ("total = "):gmatch(".") do
    vim.api.nvim_buf_set_text(buf, row, col, row, col, { key })
    col = col + 1
  end
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 } -- automatic, as after typing (by hand, alternatives follow)
  local responses = vim.lsp.buf_request_sync(buf, "textDocument/inlineCompletion", params, 60000)
  local answer = responses and responses[client_id]
  assert(answer, "no answer to textDocument/inlineCompletion")
  result.error = answer.err
  result.answer = answer.result
  result.position = params.position
  result.text = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, true), "\n") .. "\n"
end)
if not ok then
  result.failure = tostring(err)
  finish(1)
else
  finish(0)
end
