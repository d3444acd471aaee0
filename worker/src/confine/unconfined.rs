//! No confinement: the agent runs as a plain child of the worker, in its own
//! process group. Only for development; the worker warns at start.

/// The agent's argv, unchanged.
pub fn argv(agent_argv: &[String]) -> Vec<String> {
    agent_argv.to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn argv_is_unchanged() {
        assert_eq!(
            super::argv(&["/bin/true".into()]),
            vec!["/bin/true".to_string()]
        );
    }
}
