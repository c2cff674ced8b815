//! Random identifiers in the shapes clients expect (`msg_...`, `req_...`, `toolu_...`).

use rand::distr::{Alphanumeric, SampleString};

/// `prefix` followed by 24 random alphanumeric characters.
pub fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.push_str(&Alphanumeric.sample_string(&mut rand::rng(), 24));
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_prefix_and_differ() {
        let a = super::random_id("msg_");
        let b = super::random_id("msg_");
        assert!(a.starts_with("msg_"));
        assert_eq!(a.len(), 28);
        assert_ne!(a, b);
    }
}
