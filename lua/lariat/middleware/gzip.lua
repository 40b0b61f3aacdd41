-- lariat.middleware.gzip(opts): the old name of lariat.middleware.compress,
-- which now also speaks br and zstd (opts.encodings = { "gzip" } for gzip
-- alone). Its options threshold and level keep their meaning.
return require "lariat.middleware.compress"
