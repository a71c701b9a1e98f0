//! kube-proxy's rule sets for Services, written as kube-proxy writes them
//! (kubernetes `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go`), for the NAT half of its job: the
//! per-packet path of a new connection to a ClusterIP. The filter chains
//! (firewall and no-endpoint checks, empty while every Service has
//! endpoints) are left out.

use std::{
    fmt::Write as _,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    net::{Ipv4Addr, SocketAddrV4},
};

/// One port of a Service, as kube-proxy sees it.
pub struct ServicePort {
    /// Names it: `bench/svc<index>`, port `http`, TCP.
    pub index: u32,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName`.
    fn name(&self) -> String {
        format!("bench/svc{}:http", self.index)
    }

    /// The nftables flavour of the name.
    fn nft_name(&self) -> String {
        format!("bench/svc{}/tcp/http", self.index)
    }

    fn iptables_service_chain(&self) -> String {
        format!("KUBE-SVC-{}", chain_hash(&self.name()))
    }

    fn iptables_endpoint_chain(&self, endpoint: SocketAddrV4) -> String {
        format!(
            "KUBE-SEP-{}",
            chain_hash(&format!("{}{endpoint}", self.name()))
        )
    }

    fn nft_service_chain(&self) -> String {
        let name = self.nft_name();
        format!("service-{}-{name}", &chain_hash(&name)[..8])
    }

    fn nft_endpoint_chain(&self, endpoint: SocketAddrV4) -> String {
        let name = self.nft_name();
        format!(
            "endpoint-{}-{name}__{}/{}",
            &chain_hash(&format!("{name}{endpoint}"))[..8],
            endpoint.ip(),
            endpoint.port()
        )
    }
}

/// A chain name suffix: 16 upper-case characters from a hash of `name`
/// (kube-proxy takes base32 of SHA-256; only uniqueness matters here).
fn chain_hash(name: &str) -> String {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// The masquerade mark kube-proxy uses.
const MASQUERADE_MARK: &str = "0x4000";

/// The jumps into kube-proxy's chains from the built-in ones, which
/// kube-proxy ensures once (`iptables -I`), not in its restores.
pub fn iptables_jumps() -> String {
    "*nat\n\
     :KUBE-SERVICES - [0:0]\n\
     :KUBE-POSTROUTING - [0:0]\n\
     -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
     -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
     -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
     COMMIT\n"
        .to_string()
}

/// One `iptables-restore --noflush` sync as kube-proxy's partial sync
/// writes it: `written` Services get their chains (re)written, the chains
/// of `departed` endpoints go, and `KUBE-SERVICES` is rewritten with a jump for every
/// Service in `all`, in order (the last one's jump is the last looked at).
pub fn iptables_sync(
    all: &[ServicePort],
    written: &[&ServicePort],
    departed: &[(&ServicePort, SocketAddrV4)],
    cluster_cidr: &str,
) -> String {
    let mut declarations = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}\n"
    );
    for service in written {
        let (name, chain) = (service.name(), service.iptables_service_chain());
        let (ip, port) = (service.cluster_ip, service.port);
        let _ = writeln!(declarations, ":{chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip}/32 \
             --dport {port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
        );
        let count = service.endpoints.len();
        for (position, &endpoint) in service.endpoints.iter().enumerate() {
            let endpoint_chain = service.iptables_endpoint_chain(endpoint);
            let _ = writeln!(declarations, ":{endpoint_chain} - [0:0]");
            let left = count - position;
            let statistic = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {chain} -m comment --comment \"{name} -> {endpoint}\" {statistic}-j {endpoint_chain}\n\
                 -A {endpoint_chain} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ\n\
                 -A {endpoint_chain} -m comment --comment {name} -m tcp -p tcp -j DNAT \
                 --to-destination {endpoint}",
                endpoint.ip()
            );
        }
    }
    // Declared (so emptied) first: a chain with rules cannot go.
    for (service, endpoint) in departed {
        let chain = service.iptables_endpoint_chain(*endpoint);
        let _ = writeln!(declarations, ":{chain} - [0:0]");
        let _ = writeln!(rules, "-X {chain}");
    }
    for service in all {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 \
             --dport {} -j {}",
            service.name(),
            service.cluster_ip,
            service.port,
            service.iptables_service_chain()
        );
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n",
    );
    declarations + &rules
}

const NFT_TABLE: &str = "ip kube-proxy";

/// kube-proxy's nftables table with its fixed chains and maps.
pub fn nft_table() -> String {
    format!(
        "add table {NFT_TABLE} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {NFT_TABLE} mark-for-masquerade\n\
         add rule {NFT_TABLE} mark-for-masquerade mark set mark or {MASQUERADE_MARK}\n\
         add chain {NFT_TABLE} masquerading\n\
         add rule {NFT_TABLE} masquerading mark and {MASQUERADE_MARK} == 0 return\n\
         add rule {NFT_TABLE} masquerading mark set mark xor {MASQUERADE_MARK}\n\
         add rule {NFT_TABLE} masquerading masquerade fully-random\n\
         add map {NFT_TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {NFT_TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"NodePort traffic\" ; }}\n\
         add chain {NFT_TABLE} services\n\
         add rule {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {NFT_TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 \
         meta l4proto . th dport vmap @service-nodeports\n\
         add chain {NFT_TABLE} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n\
         add rule {NFT_TABLE} nat-prerouting jump services\n\
         add chain {NFT_TABLE} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {NFT_TABLE} nat-output jump services\n\
         add chain {NFT_TABLE} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule {NFT_TABLE} nat-postrouting jump masquerading\n"
    )
}

/// One `nft -f` transaction as kube-proxy's sync writes it: `written`
/// Services get their service and endpoint chains (re)written and their
/// map element (`new_services`), the chains of `departed` endpoints are
/// flushed and deleted.
pub fn nft_sync(
    written: &[&ServicePort],
    new_services: bool,
    departed: &[(&ServicePort, SocketAddrV4)],
    cluster_cidr: &str,
) -> String {
    let mut transaction = String::new();
    for service in written {
        let mut vmap = Vec::new();
        for (position, &endpoint) in service.endpoints.iter().enumerate() {
            let chain = service.nft_endpoint_chain(endpoint);
            let _ = writeln!(
                transaction,
                "add chain {NFT_TABLE} {chain}\nflush chain {NFT_TABLE} {chain}\n\
                 add rule {NFT_TABLE} {chain} ip saddr {} jump mark-for-masquerade\n\
                 add rule {NFT_TABLE} {chain} meta l4proto tcp dnat to {endpoint}",
                endpoint.ip()
            );
            vmap.push(format!("{position} : goto {chain}"));
        }
        let chain = service.nft_service_chain();
        let (ip, port) = (service.cluster_ip, service.port);
        let _ = writeln!(
            transaction,
            "add chain {NFT_TABLE} {chain}\nflush chain {NFT_TABLE} {chain}\n\
             add rule {NFT_TABLE} {chain} ip daddr {ip} tcp dport {port} ip saddr != {cluster_cidr} \
             jump mark-for-masquerade\n\
             add rule {NFT_TABLE} {chain} numgen random mod {} vmap {{ {} }}",
            vmap.len(),
            vmap.join(", ")
        );
        if new_services {
            let _ = writeln!(
                transaction,
                "add element {NFT_TABLE} service-ips {{ {ip} . tcp . {port} : goto {chain} }}"
            );
        }
    }
    for (service, endpoint) in departed {
        let chain = service.nft_endpoint_chain(*endpoint);
        let _ = writeln!(
            transaction,
            "flush chain {NFT_TABLE} {chain}\ndelete chain {NFT_TABLE} {chain}"
        );
    }
    transaction
}
