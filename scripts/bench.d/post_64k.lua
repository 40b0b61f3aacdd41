-- wrk script for the POST echo row: every request POSTs the same 64 KiB body
-- (keep the size in step with ECHO_BODY in load.py, which checks that the
-- server really echoed it back).
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
