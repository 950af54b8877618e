//! The addresses of a testbed: host `i` is `10.<octet>.<(i+1) / 256>.<(i+1) % 256>` in the
//! `/16` subnet `10.<octet>.0.0/16`. The second octet is drawn at random per testbed so that two
//! testbeds never look alike in logs; they could not collide anyway, since each address exists
//! only inside that testbed's own namespaces and each router holds only its own TUN devices.

use std::net::Ipv4Addr;

/// The most hosts a `/16` holds (`.0.0` and `.255.255` are not host addresses).
pub const MAX_HOSTS: usize = 65_534;

/// The `/16` subnet of one testbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    octet: u8,
}

impl Subnet {
    /// The subnet `10.<octet>.0.0/16`.
    pub fn new(octet: u8) -> Subnet {
        Subnet { octet }
    }

    /// A random subnet in `10.16.0.0 - 10.254.0.0` (clear of the low ones people use by hand).
    pub fn random() -> Subnet {
        Subnet::new(rand::random_range(16..=254))
    }

    /// The second octet.
    pub fn octet(&self) -> u8 {
        self.octet
    }

    /// The address of host `i` (`i < MAX_HOSTS`).
    pub fn host(&self, i: usize) -> Ipv4Addr {
        assert!(i < MAX_HOSTS, "host {i} does not fit a /16");
        let k = i + 1;
        Ipv4Addr::new(10, self.octet, (k >> 8) as u8, (k & 0xff) as u8)
    }

    /// Which host an address belongs to, if it is one of this subnet's host addresses.
    pub fn host_of(&self, addr: Ipv4Addr) -> Option<usize> {
        let [a, b, c, d] = addr.octets();
        if a != 10 || b != self.octet {
            return None;
        }
        let k = (usize::from(c) << 8) | usize::from(d);
        (1..=MAX_HOSTS).contains(&k).then(|| k - 1)
    }

    /// `10.<octet>.0.0/16`.
    pub fn cidr(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_round_trip() {
        let s = Subnet::new(42);
        for i in [0, 1, 253, 254, 255, 256, 1000, MAX_HOSTS - 1] {
            assert_eq!(s.host_of(s.host(i)), Some(i), "host {i}");
        }
        assert_eq!(s.host(0), Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(s.host(255), Ipv4Addr::new(10, 42, 1, 0));
        assert_eq!(s.host_of(Ipv4Addr::new(10, 42, 0, 0)), None);
        assert_eq!(s.host_of(Ipv4Addr::new(10, 42, 255, 255)), None);
        assert_eq!(s.host_of(Ipv4Addr::new(10, 43, 0, 1)), None);
        assert_eq!(s.cidr(), "10.42.0.0/16");
    }
}
