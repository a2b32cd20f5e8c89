// lua-health runs an Argo CD health check the way Argo CD's controller runs a
// resource.customizations.health script (util/lua/lua.go there): a fresh gopher-lua state
// with only the package, base and table libraries and an os library of time and date
// (useOpenLibs: true opens every library instead), the object as the global `obj`, a
// one-second limit, and the table the script returns read as {status, message}.
//
//	lua-health [-open-libs] SCRIPT [OBJECT.json]   # the object from stdin without OBJECT.json
//
// It prints {"status": ..., "message": ...} on stdout. A status other than Argo CD's six is
// reported as Argo CD reports it: Unknown, "Lua returned an invalid health status". A
// script that fails, times out or returns something else than a table exits 1 with the
// error on stderr, where Argo CD would mark the resource's health unknown with that error.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// toLua turns a decoded JSON value into a Lua value: objects and arrays become tables,
// numbers numbers, null nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), toLua(L, item))
		}
		return t
	}
	return lua.LNil
}

// safeOs is the os library Argo CD gives a script: only time and date, taken here from
// gopher-lua's own os library (Argo CD's are copies of those).
func safeOs(L *lua.LState) *lua.LTable {
	full := L.NewTable()
	L.Push(L.NewFunction(lua.OpenOs))
	L.Call(0, 1)
	if t, ok := L.Get(-1).(*lua.LTable); ok {
		full = t
	}
	L.Pop(1)
	safe := L.NewTable()
	for _, name := range []string{"time", "date"} {
		safe.RawSetString(name, full.RawGetString(name))
	}
	return safe
}

func run(script string, object []byte, openLibs bool) (string, string, error) {
	var obj any
	if err := json.Unmarshal(object, &obj); err != nil {
		return "", "", fmt.Errorf("the object is not JSON: %w", err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	if !openLibs {
		osLib := safeOs(L)
		L.SetGlobal(lua.OsLibName, osLib)
		L.PreloadModule(lua.OsLibName, func(L *lua.LState) int { L.Push(osLib); return 1 })
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return "", "", err
	}
	result, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("expect table output from Lua script, not %s", L.Get(-1).Type())
	}
	status, message := result.RawGetString("status"), result.RawGetString("message")
	for field, v := range map[string]lua.LValue{"status": status, "message": message} {
		if v.Type() != lua.LTString && v.Type() != lua.LTNil {
			return "", "", fmt.Errorf("the returned table's %s is a %s, not a string", field, v.Type())
		}
	}
	s, m := lua.LVAsString(status), lua.LVAsString(message)
	if !validStatus[s] {
		return "Unknown", "Lua returned an invalid health status", nil
	}
	return s, m, nil
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open every standard library, as useOpenLibs: true does")
	flag.Parse()
	if flag.NArg() < 1 || flag.NArg() > 2 {
		fmt.Fprintln(os.Stderr, "usage: lua-health [-open-libs] SCRIPT [OBJECT.json]")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var object []byte
	if flag.NArg() == 2 {
		object, err = os.ReadFile(flag.Arg(1))
	} else {
		object, err = io.ReadAll(os.Stdin)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	status, message, err := run(string(script), object, *openLibs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lua-health:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(map[string]string{"status": status, "message": message})
	fmt.Println(string(out))
}
