//! `dataplane-cni`: the chained CNI plugin (see `dataplane_user::cni`).

fn main() -> std::process::ExitCode {
    dataplane_user::cni::main()
}
