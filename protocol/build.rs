//! Generates the protobuf messages and ttrpc stubs of `protos/` (the agent service and the
//! VMM control API) with the pure-Rust protobuf parser: no `protoc` on the build machine.

fn main() {
    println!("cargo:rerun-if-changed=protos");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["protos/agent.proto", "protos/vmm.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            ..Default::default()
        })
        .run()
        .expect("generating the services in protos/");
    // The generated files start with inner attributes and inner doc comments, which
    // `include!` cannot take inside a module; the module that includes them carries the
    // allows instead.
    for name in ["agent.rs", "agent_ttrpc.rs", "vmm.rs", "vmm_ttrpc.rs"] {
        let path = std::path::Path::new(&out).join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("#![") && !line.starts_with("//!")
            })
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated code");
    }
}
