fn main() {
    std::process::exit(tapevault::cli::main());
}
