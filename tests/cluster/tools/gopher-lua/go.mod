// lua-health: runs an Argo CD health.lua under gopher-lua (v1.1.1, its latest release), the
// Lua 5.1 interpreter Argo CD embeds; tests/cluster/test_argocd_lua.py drives it.
module kjob.invalid/tests/cluster/tools/gopher-lua

go 1.26.0

require github.com/yuin/gopher-lua v1.1.1
