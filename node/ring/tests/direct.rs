//! The state machine driven by hand, without the simulator: messages are shuttled between
//! rings by a tiny loop, time advances in fixed steps.

use std::collections::{BTreeMap, VecDeque};

use tarn_proto::ring::{NodeRef, RingMessage};
use tarn_proto::Id;
use tarn_ring::{Action, Command, Event, Ring, RingConfig};

fn node(n: u8) -> NodeRef {
    let mut id = [0u8; 32];
    id[0] = n;
    NodeRef {
        id: Id(id),
        addr: format!("n{n}"),
    }
}

struct World {
    rings: BTreeMap<String, Ring>,
    wire: VecDeque<(String, RingMessage)>,
    events: Vec<(String, Event)>,
    now: u64,
}

impl World {
    fn new() -> World {
        World {
            rings: BTreeMap::new(),
            wire: VecDeque::new(),
            events: Vec::new(),
            now: 0,
        }
    }

    fn add(&mut self, n: u8, cmd: Command) {
        let me = node(n);
        let mut r = Ring::new(RingConfig::default(), me.clone(), n as u64);
        r.command(self.now, cmd);
        self.rings.insert(me.addr, r);
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for (addr, r) in self.rings.iter_mut() {
                while let Some(a) = r.poll_action() {
                    moved = true;
                    match a {
                        Action::Send { to, msg } => self.wire.push_back((to, msg)),
                        Action::Event(e) => self.events.push((addr.clone(), e)),
                    }
                }
            }
            while let Some((to, msg)) = self.wire.pop_front() {
                moved = true;
                if let Some(r) = self.rings.get_mut(&to) {
                    r.handle(self.now, msg);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            for r in self.rings.values_mut() {
                if r.poll_timeout().is_some_and(|t| t <= self.now) {
                    r.handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }

    fn succs(&self, n: u8) -> Vec<u8> {
        self.rings[&node(n).addr]
            .successors()
            .iter()
            .map(|s| s.id.0[0])
            .collect()
    }

    fn pred(&self, n: u8) -> Option<u8> {
        self.rings[&node(n).addr].predecessor().map(|p| p.id.0[0])
    }
}

#[test]
fn a_lone_node_is_responsible_for_everything() {
    let mut w = World::new();
    w.add(10, Command::Bootstrap);
    let r = &w.rings["n10"];
    assert!(r.is_member());
    assert!(r.successors().is_empty());
    assert!(r.is_responsible(&Id([0xee; 32])));
    assert!(w.events.iter().any(|(_, e)| *e == Event::Joined));
}

#[test]
fn three_nodes_form_one_ordered_ring_without_self_or_duplicates() {
    let mut w = World::new();
    w.add(10, Command::Bootstrap);
    w.add(
        200,
        Command::Join {
            via: vec!["n10".into()],
        },
    );
    w.add(
        100,
        Command::Join {
            via: vec!["n200".into()],
        },
    );
    w.run(10_000);
    assert_eq!(w.succs(10), vec![100, 200]);
    assert_eq!(w.succs(100), vec![200, 10]);
    assert_eq!(w.succs(200), vec![10, 100]);
    assert_eq!(
        (w.pred(10), w.pred(100), w.pred(200)),
        (Some(200), Some(10), Some(100))
    );
    // Each key has exactly one responsible node.
    for k in [0u8, 10, 11, 100, 150, 200, 255] {
        let mut id = [0u8; 32];
        id[0] = k;
        id[31] = 1;
        let owners = w
            .rings
            .values()
            .filter(|r| r.is_responsible(&Id(id)))
            .count();
        assert_eq!(owners, 1, "key {k}");
    }
}

#[test]
fn lookup_finds_the_responsible_node_and_its_successors() {
    let mut w = World::new();
    w.add(10, Command::Bootstrap);
    for n in [50u8, 90, 130, 170, 210] {
        w.add(
            n,
            Command::Join {
                via: vec!["n10".into()],
            },
        );
        w.run(2_000);
    }
    w.run(10_000);
    let mut target = [0u8; 32];
    target[0] = 140;
    w.rings.get_mut("n50").unwrap().command(
        w.now,
        Command::Lookup {
            id: 7,
            target: Id(target),
        },
    );
    w.pump();
    w.run(1_000);
    let done = w.events.iter().find_map(|(a, e)| match e {
        Event::LookupDone { id: 7, outcome } if a == "n50" => Some(outcome.clone()),
        _ => None,
    });
    let outcome = done.expect("lookup finished");
    let found: Vec<u8> = outcome.result.unwrap().iter().map(|n| n.id.0[0]).collect();
    assert_eq!(found[0], 170);
    assert!(found.starts_with(&[170, 210, 10]));
}

#[test]
fn a_crashed_successor_is_dropped_and_the_ring_closes_over_it() {
    let mut w = World::new();
    w.add(10, Command::Bootstrap);
    for n in [60u8, 120, 180] {
        w.add(
            n,
            Command::Join {
                via: vec!["n10".into()],
            },
        );
        w.run(2_000);
    }
    w.run(10_000);
    assert_eq!(w.succs(10), vec![60, 120, 180]);
    w.rings.remove("n60");
    w.run(15_000);
    assert_eq!(w.succs(10), vec![120, 180]);
    assert_eq!(w.pred(120), Some(10));
}
