//! Runs simulator scenarios from the command line.
//!
//! `tarn-sim --seed S --nodes N --churn C` replays one run; `--seeds A..B` runs a range (ring
//! sizes drawn from `--min-nodes..=--max-nodes` per seed unless `--nodes` is given) and prints
//! the replay command of every failing seed.

use tarn_sim::{run_scenario, Scenario};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: u64| -> u64 {
        arg(&args, name)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
            .unwrap_or(default)
    };
    if let Some(n) = arg(&args, "--route") {
        let n: usize = n.parse().expect("--route takes a node count");
        let lookups = num("--lookups", 2000) as usize;
        for fail in [0.0, 0.1, 0.5] {
            let s = tarn_sim::route_stats(num("--seed", 1), n, fail, lookups);
            println!(
                "N={} failed={:.0}% lookups={} correct={:.2}% mean_hops={:.2} p99_hops={} (target mean <= {:.2}) wrong={} errors={:?}",
                s.nodes,
                fail * 100.0,
                s.lookups,
                100.0 * s.correct as f64 / s.lookups as f64,
                s.mean_hops,
                s.p99_hops,
                0.5 * (n as f64).log2() + 1.0,
                s.wrong,
                s.errors
            );
        }
        return;
    }
    let churn = num("--churn", 20) as usize;
    let (min_n, max_n) = (num("--min-nodes", 2), num("--max-nodes", 64));
    let seeds: Vec<u64> = match (arg(&args, "--seed"), arg(&args, "--seeds")) {
        (Some(s), _) => vec![s.parse().expect("--seed takes a number")],
        (None, Some(r)) => {
            let (a, b) = r.split_once("..").expect("--seeds A..B");
            (a.parse().expect("A")..b.parse().expect("B")).collect()
        }
        (None, None) => (0..100).collect(),
    };
    let mut failed = 0;
    let mut converge = Vec::new();
    let (mut acked, mut repaired) = (0usize, 0u64);
    for seed in &seeds {
        let nodes = arg(&args, "--nodes")
            .map(|n| n.parse().expect("--nodes takes a number"))
            .unwrap_or_else(|| (min_n + seed % (max_n - min_n + 1)) as usize);
        let sc = Scenario::new(*seed, nodes, churn);
        let o = run_scenario(&sc);
        acked += o.acked;
        repaired += o.repaired;
        if o.violations.is_empty() {
            converge.push(o.converge_ms.unwrap_or(0));
        } else {
            failed += 1;
            println!("FAIL seed {seed} ({nodes} nodes): {}", o.violations[0]);
            println!("  replay: {}", sc.replay_command());
        }
        if seeds.len() == 1 {
            for v in &o.violations {
                println!("  violation: {v}");
            }
            if !o.violations.is_empty() {
                for st in &o.states {
                    println!("  state: {st}");
                }
            }
            println!(
                "seed {seed}: {} live, converged in {:?} ms, {} messages, {} records acknowledged, {} repaired, lookup hops {:?}",
                o.live, o.converge_ms, o.messages, o.acked, o.repaired, o.hops
            );
        }
    }
    converge.sort_unstable();
    let p = |q: f64| {
        converge
            .get(((converge.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{} seeds, {} failed; {acked} acknowledged records checked ({repaired} values moved by repair); convergence after the last disturbance: median {} ms, p99 {} ms, max {} ms",
        seeds.len(),
        failed,
        p(0.5),
        p(0.99),
        converge.last().copied().unwrap_or(0)
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
