//! Showing a neighbourhood map: a table for a person, JSON for a program, Graphviz `dot` for a
//! picture (`brume map --dot | dot -Tpng > map.png`). Nodes read as their [`NodeName`]; links,
//! which the map keys by the overlay's numeric node ids, are shown by the names of their ends.

use std::collections::HashMap;
use std::fmt::Write as _;

use brume_overlay::ids::NodeId;
use brume_overlay::neighbourhood::{NeighbourhoodMap, RttHow};

use brume_control::NodeName;

/// The name of every node in the map, by its numeric id.
fn names(map: &NeighbourhoodMap) -> HashMap<NodeId, String> {
    map.nodes
        .iter()
        .map(|n| (n.id, NodeName::of_record(n).to_string()))
        .collect()
}

/// A node's name, or its numeric id when the map holds no record of it.
fn name_of(names: &HashMap<NodeId, String>, id: NodeId) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

/// One line per node (its RTT from the origin and how that was established, resources, load,
/// coordinate), then one per measured link. `path` = the RTT sum of an overlay path within the
/// budget; `direct` = measured by the origin (its own link or a probe); `-` = a map of a node
/// that does not say (older than issue 17).
pub fn table(map: &NeighbourhoodMap, origin: Option<u64>) -> String {
    let names = names(map);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:>8} {:<6} {:>11} {:>13} {:>5} {:>6} {:>22}",
        "node", "rtt ms", "via", "cpu free", "memory free", "load", "rel", "coordinate (ms)"
    );
    for n in &map.nodes {
        let mark = if Some(n.id.0) == origin { "*" } else { "" };
        let (rtt, via) = match map.proof(n.id) {
            Some(p) => (format!("{:.2}", p.rtt_ms), p.how.as_str()),
            None => ("-".to_string(), "-"),
        };
        let _ = writeln!(
            s,
            "{:<24} {:>8} {:<6} {:>5}/{:<5} {:>6}/{:<6} {:>5.2} {:>6.3} {:>22}",
            format!("{}{mark}", name_of(&names, n.id)),
            rtt,
            via,
            n.cpu_free_milli,
            n.cpu_total_milli,
            n.mem_free_mb,
            n.mem_total_mb,
            n.load,
            n.reliability,
            format!(
                "({:.1}, {:.1}, h {:.1})",
                n.coord.x, n.coord.y, n.coord.height
            ),
        );
    }
    let _ = writeln!(s, "\n{:<24} {:<24} {:>9}", "link", "", "rtt ms");
    for l in &map.links {
        let _ = writeln!(
            s,
            "{:<24} {:<24} {:>9.2}",
            name_of(&names, l.a),
            name_of(&names, l.b),
            l.rtt_ms
        );
    }
    let count = |how: RttHow| map.proofs.iter().filter(|p| p.how == how).count();
    let _ = write!(
        s,
        "{} nodes ({} proven by an overlay path, {} confirmed directly), {} measured links",
        map.nodes.len(),
        count(RttHow::Path),
        count(RttHow::Direct),
        map.links.len()
    );
    s
}

/// An undirected Graphviz graph: nodes labelled with their name and free resources, edges with
/// their RTT, the origin drawn bold; edge lengths follow RTT for `neato`. Graphviz ids stay the
/// numeric ids (unique, plain ASCII).
pub fn dot(map: &NeighbourhoodMap, origin: Option<u64>) -> String {
    let names = names(map);
    let mut s =
        String::from("graph neighbourhood {\n  node [shape=box, fontname=\"monospace\"];\n");
    for n in &map.nodes {
        let style = if Some(n.id.0) == origin {
            ", style=bold, penwidth=2"
        } else {
            ""
        };
        let label = name_of(&names, n.id)
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let _ = writeln!(
            s,
            "  \"{}\" [label=\"{label}\\ncpu {}/{}m\\nmem {}/{} MiB\"{style}];",
            n.id, n.cpu_free_milli, n.cpu_total_milli, n.mem_free_mb, n.mem_total_mb
        );
    }
    for l in &map.links {
        let _ = writeln!(
            s,
            "  \"{}\" -- \"{}\" [label=\"{:.1} ms\", len={:.2}];",
            l.a,
            l.b,
            l.rtt_ms,
            (l.rtt_ms / 10.0).max(0.5)
        );
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::neighbourhood::{Link, NodeRecord, RttProof};

    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    fn sample() -> NeighbourhoodMap {
        let mut named = NodeRecord::bare(NodeId(2));
        named.peer = Some(PEER.parse().expect("a peer id"));
        NeighbourhoodMap {
            nodes: vec![
                NodeRecord::bare(NodeId(1)),
                named,
                NodeRecord::bare(NodeId(3)),
            ],
            links: vec![Link::new(NodeId(2), NodeId(1), 12.5)],
            proofs: vec![
                RttProof {
                    id: NodeId(1),
                    rtt_ms: 0.0,
                    how: RttHow::Origin,
                },
                RttProof {
                    id: NodeId(2),
                    rtt_ms: 21.25,
                    how: RttHow::Path,
                },
                RttProof {
                    id: NodeId(3),
                    rtt_ms: 33.5,
                    how: RttHow::Direct,
                },
            ],
        }
    }

    #[test]
    fn dot_renders_with_graphviz() {
        let text = dot(&sample(), Some(1));
        assert!(text.contains("12.5 ms"));
        // The real Graphviz must accept it (scripts/install-deps.sh installs it).
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("graphviz `dot` is installed by scripts/install-deps.sh");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("dot reads the graph");
        let out = child.wait_with_output().expect("dot runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }

    #[test]
    fn table_lists_every_node_and_link() {
        let t = table(&sample(), Some(1));
        assert!(
            t.contains(
                "3 nodes (1 proven by an overlay path, 1 confirmed directly), 1 measured links"
            ),
            "{t}"
        );
        // Each node says how its RTT from the origin was established.
        let line = |name: &str| t.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        assert!(line("n3").contains("33.50 direct"), "{t}");
        assert!(line("…4kx6nXTN").contains("21.25 path"), "{t}");
        assert!(line("n1*").contains("0.00 origin"), "{t}");
        assert!(t.contains("12.50"), "{t}");
        // A node with a peer id reads as its short form, in its line and in its links.
        assert_eq!(t.matches("…4kx6nXTN").count(), 2, "{t}");
        assert!(!t.contains(&NodeId(2).to_string()), "{t}");
    }
}
