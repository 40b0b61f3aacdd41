-- lariat.limits: the bounds request helpers enforce. One table per Lua state;
-- an app may change them at load time (`require("lariat").limits.query_params = 50`).
-- Going over a limit answers 400/413; nothing is ever silently dropped.
return {
  query_params = 1000,            -- pairs in the query string          → 400
  form_params = 1000,             -- pairs in an urlencoded body        → 400
  multipart_parts = 100,          -- parts in a multipart body          → 413
  multipart_header_size = 8192,   -- bytes of one part's header block   → 413
  multipart_size = 8 * 1024 * 1024, -- bytes of the whole multipart body → 413
}
