//! The C examples are the C tests: each is compiled with `-Wall -Wextra -Werror -pedantic`
//! against the freshly built `libgrenache.so`, run, and run again under AddressSanitizer and
//! under valgrind (`--leak-check=full --error-exitcode=1`).

mod support;

use support::{Flavor, run_example};

#[test]
fn basics_runs() {
    run_example("basics", Flavor::Plain, &[], &[]);
}

#[test]
fn basics_under_asan() {
    run_example("basics", Flavor::Asan, &[], &[]);
}

#[test]
fn basics_under_valgrind() {
    run_example("basics", Flavor::Valgrind, &[], &[]);
}
