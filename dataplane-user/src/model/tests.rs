//! The rules and the per-source bookkeeping of remote nodes.

use super::*;

fn node(ip: [u8; 4], cidr: &str) -> NodeSpec {
    NodeSpec {
        ip: Ipv4Addr::from(ip),
        pod_cidr: cidr.parse().unwrap(),
    }
}

fn local() -> LocalFacts {
    LocalFacts {
        tunnel: true,
        node_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
    }
}

#[test]
fn overlapping_cidrs_are_found_among_many_nodes() {
    let mut set = NodeSet::default();
    for index in 1..=200u8 {
        let spec = node([192, 0, 3, index], &format!("10.244.{index}.0/24"));
        assert_eq!(set.insert(spec, &local()), Ok(true));
    }
    let inside = node([192, 0, 4, 1], "10.244.77.128/25");
    assert!(
        set.check(&inside, &local())
            .unwrap_err()
            .1
            .contains("10.244.77.0/24")
    );
    let around = node([192, 0, 4, 1], "10.244.64.0/20");
    assert!(set.check(&around, &local()).is_err());
    assert!(
        set.check(&node([192, 0, 4, 1], "10.244.201.0/24"), &local())
            .is_ok()
    );
    // A node moving within its own CIDR's space is not its own overlap.
    assert_eq!(
        set.insert(node([192, 0, 3, 7], "10.244.7.0/25"), &local()),
        Ok(true)
    );
    assert!(
        set.check(&node([192, 0, 3, 10], "10.244.0.0/24"), &local())
            .is_err()
    );
    assert!(
        set.check(&node([192, 0, 2, 10], "10.244.250.0/24"), &local())
            .unwrap_err()
            .1
            .contains("own IP")
    );
}

#[test]
fn a_replacement_that_breaks_a_rule_changes_nothing() {
    let mut nodes = RemoteNodes::default();
    let first = node([192, 0, 2, 11], "10.244.1.0/24");
    let second = node([192, 0, 2, 12], "10.244.2.0/24");
    nodes
        .replace(Source::ConfigFile, &[first, second], &local())
        .unwrap();
    // The first withdrawn, a new one overlapping the second: refused whole.
    let clash = node([192, 0, 2, 13], "10.244.2.128/25");
    assert!(
        nodes
            .replace(Source::ConfigFile, &[second, clash], &local())
            .is_err()
    );
    assert_eq!(
        nodes.effective().iter().collect::<Vec<_>>(),
        [first, second]
    );
    // Two nodes trading CIDRs in one edit is fine.
    let traded = [
        node([192, 0, 2, 11], "10.244.2.0/24"),
        node([192, 0, 2, 12], "10.244.1.0/24"),
    ];
    let changed = nodes
        .replace(Source::ConfigFile, &traded, &local())
        .unwrap();
    assert_eq!(changed.len(), 2);
    assert_eq!(nodes.effective().iter().collect::<Vec<_>>(), traded);
}

#[test]
fn each_source_withdraws_only_what_it_contributed() {
    let mut nodes = RemoteNodes::default();
    let shared = node([192, 0, 2, 11], "10.244.1.0/24");
    let listed = node([192, 0, 2, 12], "10.244.2.0/24");
    nodes
        .replace(Source::ConfigFile, &[shared], &local())
        .unwrap();
    nodes
        .replace(Source::Kubernetes, &[shared, listed], &local())
        .unwrap();
    assert_eq!(
        nodes.replace(Source::Kubernetes, &[], &local()).unwrap(),
        [listed.ip]
    );
    assert_eq!(nodes.effective().iter().collect::<Vec<_>>(), [shared]);
    assert_eq!(nodes.withdraw(None, shared.ip, &local()), [shared.ip]);
    assert!(nodes.effective().is_empty());
}

#[test]
fn an_endpoint_stays_while_any_source_lists_it() {
    let (file_only, both) = (Ipv4Addr::new(10, 244, 0, 5), Ipv4Addr::new(10, 244, 0, 6));
    let mut sources = EndpointSources::default();
    sources.list(file_only, Source::ConfigFile);
    sources.list(both, Source::ConfigFile);
    sources.list(both, Source::Api);
    assert_eq!(
        sources.withdraw(Source::ConfigFile, &BTreeSet::new()),
        vec![file_only]
    );
    assert!(
        sources
            .withdraw(Source::ConfigFile, &BTreeSet::new())
            .is_empty()
    );
    sources.forget(both);
    assert!(sources.withdraw(Source::Api, &BTreeSet::new()).is_empty());
}
