#!/usr/bin/env bash
# Are the V4L2 bindings the camera feature was built with right for the target?
#
#   scripts/v4l2-abi-check.sh BINDINGS.rs CC
#
# BINDINGS.rs is the file bindgen wrote for v4l2-sys-mit in the target's build
# (target/<triple>/release/build/v4l2-sys-mit-*/out/v4l2_bindings.rs); CC is the target's C
# compiler (aarch64-linux-gnu-gcc). bindgen records, for every struct and union it laid out, the
# size, alignment and field offsets it computed; this turns those of every `v4l2_*` type into
# C11 static assertions and compiles them with CC against the target's own <linux/videodev2.h>.
# A wrong layout (bindings generated for the host's ABI, a header mismatch) fails to compile,
# naming the type. Prints how many types and fields were checked.
set -euo pipefail
bindings=${1:?usage: $0 BINDINGS.rs CC}
cc=${2:?usage: $0 BINDINGS.rs CC}
src=$(mktemp --suffix=.c)
trap 'rm -f "$src" "${src%.c}.o"' EXIT
python3 - "$bindings" >"$src" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
kinds = dict((m.group(2), m.group(1)) for m in re.finditer(r"pub (struct|union) (\w+) \{", text))
# As v4l2-sys-mit's wrapper.h: the kernel header wants struct timespec/timeval declared first.
print("#include <stddef.h>\n#include <time.h>\n#include <sys/time.h>\n#include <linux/videodev2.h>")
# bindgen appends "_" to C names that are Rust keywords.
KEYWORDS = {"type", "match", "priv", "ref", "move", "box", "in", "fn", "impl", "loop", "mod",
            "mut", "pub", "self", "struct", "trait", "use", "where", "yield", "async", "await",
            "dyn", "final", "macro", "override", "typeof", "unsafe", "virtual", "become", "abstract",
            "crate", "extern", "let", "super", "try", "unsized", "do"}
types = fields = 0
for m in re.finditer(r"fn bindgen_test_layout_(\w+)\(\) \{(.*?)\n\}", text, re.S):
    name, body = m.group(1), m.group(2)
    if not name.startswith("v4l2_") or "__bindgen" in name or name not in kinds:
        continue
    c = f"{kinds[name]} {name}"
    size = re.search(r"size_of::<\w+>\(\),\s*(\d+)usize", body)
    align = re.search(r"align_of::<\w+>\(\),\s*(\d+)usize", body)
    if not size or not align:
        continue
    print(f'_Static_assert(sizeof({c}) == {size.group(1)}, "size of {name}");')
    print(f'_Static_assert(_Alignof({c}) == {align.group(1)}, "alignment of {name}");')
    types += 1
    for f in re.finditer(r"addr_of!\(\(\*ptr\)\.(\w+)\) as usize - ptr as usize \},\s*(\d+)usize", body):
        field = f.group(1)
        if field.startswith("__bindgen") or field.startswith("_bitfield"):
            continue
        if field.endswith("_") and field[:-1] in KEYWORDS:
            field = field[:-1]
        print(f'_Static_assert(offsetof({c}, {field}) == {f.group(2)}, "offset of {name}.{field}");')
        fields += 1
print(f"/* {types} types, {fields} fields */")
PY
counts=$(tail -1 "$src")
if [[ "$counts" == "/* 0 types, 0 fields */" ]]; then
  echo "v4l2-abi-check: no v4l2 layouts found in $bindings" >&2
  exit 1
fi
"$cc" -std=c11 -c "$src" -o "${src%.c}.o"
echo "v4l2 ABI: bindgen's layouts match $cc's for ${counts//[\/*]/}"
