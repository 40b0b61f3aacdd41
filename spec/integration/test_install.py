"""`cmake --install` gives a lariat that finds its Lua library under the
prefix (share/lariat/lua), without LUA_PATH."""

import os
import subprocess
from pathlib import Path

import httpx

from conftest import LariatServer, lariat_bin

HELLO = """
local lariat = require "lariat"
local app = lariat.app()
app:get("/", function(req) return package.searchpath("lariat", package.path) end)
return app
"""


def test_installed_binary_uses_the_library_under_its_prefix(tmp_path):
    build_dir = Path(lariat_bin()).parent
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(prefix)],
                   check=True, capture_output=True)
    binary = prefix / "bin" / "lariat"
    assert (prefix / "share" / "lariat" / "lua" / "lariat" / "init.lua").exists()
    app = tmp_path / "app.lua"
    app.write_text(HELLO)
    srv = LariatServer(str(app), "--workers", "1")
    old = os.environ.get("LARIAT_BIN")
    os.environ["LARIAT_BIN"] = str(binary)
    try:
        srv.start()
        found = httpx.get(srv.url("/"), trust_env=False).text
        assert found == str(prefix / "share" / "lariat" / "lua" / "lariat" / "init.lua"), found
    finally:
        srv.stop()
        if old is None:
            del os.environ["LARIAT_BIN"]
        else:
            os.environ["LARIAT_BIN"] = old
