#!/bin/sh
# Puts an empty crate in place of each workspace member whose Cargo.toml is here, so that the
# image's first build stage compiles the dependencies alone (librdkafka among them) into a
# layer that only a change of Cargo.toml or Cargo.lock rebuilds. Run at the workspace root.
set -eu
for manifest in */Cargo.toml; do
    dir=${manifest%/Cargo.toml}
    mkdir -p "$dir/src"
    : > "$dir/src/lib.rs"
    echo 'fn main() {}' > "$dir/src/main.rs"
    # Targets a manifest names explicitly must exist ([[bench]] name = "…").
    for bench in $(awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } b && $1 == "name" { gsub(/"/, "", $3); print $3 }' "$manifest"); do
        mkdir -p "$dir/benches"
        echo 'fn main() {}' > "$dir/benches/$bench.rs"
    done
done
