//! `cargo bench --bench tunnel [-- --quick] [-- --out DIR] [-- --runs N]
//! [-- --audio LISTENERS SECONDS] [-- --compare OLD.json] [-- --requests-only]`: the end-to-end harness (see
//! `warren::bench`), using the `warren` binary cargo built.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench-results")
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let audio = args.iter().position(|a| a == "--audio").and_then(|i| {
        let listeners = args.get(i + 1)?.parse().ok()?;
        let seconds = args.get(i + 2)?.parse().ok()?;
        Some((listeners, std::time::Duration::from_secs(seconds)))
    });
    let compare = args
        .iter()
        .position(|a| a == "--compare")
        .and_then(|i| args.get(i + 1))
        .map(Into::into);
    let options = warren::bench::BenchOptions {
        quick,
        out,
        warren: env!("CARGO_BIN_EXE_warren").into(),
        runs,
        audio,
        compare,
        requests_only: args.iter().any(|a| a == "--requests-only"),
    };
    if let Err(e) = runtime.block_on(warren::bench::run(options)) {
        eprintln!("\n{e}");
        std::process::exit(1);
    }
}
