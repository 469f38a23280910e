//! Writes the near-free probe model of `advex bench --pipeline` (global average
//! pool + linear(3, 1000) on 3x224x224, ImageNet preprocessing) to a file, for
//! host-side experiments such as `tools/kill_sim.sh`.
//!
//! ```sh
//! cargo run --release --example make_probe -- /tmp/probe.safetensors
//! ```

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: make_probe OUT.safetensors");
        std::process::exit(1)
    };
    if let Err(e) = advex::bench::probe_model(std::path::Path::new(&out)) {
        eprintln!("error: {e}");
        std::process::exit(1)
    }
    println!("wrote {out}");
}
