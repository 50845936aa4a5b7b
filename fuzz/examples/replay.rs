//! Replays fuzz inputs on a stable toolchain:
//! `cargo run --manifest-path fuzz/Cargo.toml --example replay -- TARGET [--stats] [PATH...]`
//! where TARGET is `page_bytes`, `page_model`, `overflow_bytes` or `storable` and each PATH is an input file or a directory
//! of them (no PATH: one input from stdin). Without `--stats` the decoded operations are
//! printed before each input runs; with it, only counts of what the inputs exercised.

use std::io::Read;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    type Target = (fn(&[u8]), fn(&[u8]) -> String);
    let (run, describe): Target = match target.as_str() {
        "page_bytes" => (
            fastmmap_fuzz::page_bytes::run,
            fastmmap_fuzz::page_bytes::describe,
        ),
        "page_model" => (
            fastmmap_fuzz::page_model::run,
            fastmmap_fuzz::page_model::describe,
        ),
        "overflow_bytes" => (
            fastmmap_fuzz::overflow_bytes::run,
            fastmmap_fuzz::overflow_bytes::describe,
        ),
        "storable" => (
            fastmmap_fuzz::storable::run,
            fastmmap_fuzz::storable::describe,
        ),
        _ => {
            eprintln!(
                "usage: replay page_bytes|page_model|overflow_bytes|storable [--stats] [PATH...]"
            );
            std::process::exit(2);
        }
    };
    let mut stats = false;
    let mut files = Vec::new();
    for arg in args {
        if arg == "--stats" {
            stats = true;
            continue;
        }
        let path = PathBuf::from(arg);
        match std::fs::read_dir(&path) {
            Ok(dir) => {
                let mut in_dir: Vec<_> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
                in_dir.sort();
                files.extend(in_dir.into_iter().filter(|p| p.is_file()));
            }
            Err(_) => files.push(path),
        }
    }
    let mut inputs: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), data)
        })
        .collect();
    if inputs.is_empty() {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).unwrap();
        inputs.push(("<stdin>".into(), data));
    }
    let n = inputs.len();
    for (name, data) in inputs {
        if !stats {
            eprintln!("== {name}\n{}", describe(&data));
        }
        run(&data);
        if !stats {
            eprintln!("== {name}: ok");
        }
    }
    if stats {
        println!("{n} inputs\n{}", fastmmap_fuzz::common::events::report());
    }
}
