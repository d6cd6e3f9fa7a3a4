"""Unannounce and signed announcements through the Python binding: Link.unannounce removes an
address from the Grapes at once; Link.pin_service keeps only addresses with a valid proof of the
service key (Link.sign_announcements publishes them); bad keys are refused."""

import os
import sys
import unittest

import grenache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_grenache import eventually


class TrustTests(unittest.TestCase):
    def setUp(self):
        self.g1 = grenache.Grape(host="127.0.0.1")
        self.g2 = grenache.Grape(bootstrap=[f"127.0.0.1:{self.g1.dht_port}"], host="127.0.0.1")
        self.g3 = grenache.Grape(bootstrap=[f"127.0.0.1:{self.g1.dht_port}"], host="127.0.0.1")
        self.links = []

    def tearDown(self):
        for link in self.links:
            link.close()
        for g in (self.g3, self.g2, self.g1):
            g.stop()

    def link(self, grape, **kw):
        link = grenache.Link(grape.url, **kw)
        self.links.append(link)
        return link

    def test_unannounce_removes_the_address_at_once(self):
        l1 = self.link(self.g1)
        eventually(lambda: l1.announce("py:un", 4343) is None, what="announce")
        eventually(lambda: "127.0.0.1:4343" in self.link(self.g2, lookup_cache=0).lookup("py:un"), what="visible")
        self.assertGreaterEqual(l1.unannounce("py:un", 4343), 1)
        with self.assertRaises(grenache.LookupEmptyError):
            self.link(self.g2, lookup_cache=0).lookup("py:un")

    def test_a_pinned_link_uses_only_proven_addresses(self):
        key = grenache.Keypair.generate()
        worker = self.link(self.g1)
        worker.sign_announcements("py:signed", [key])
        eventually(lambda: worker.announce("py:signed", 5101) is None, what="signed announce")
        self.link(self.g2).announce("py:signed", 5102)  # a hijacker, without the key
        eventually(lambda: len(self.link(self.g3, lookup_cache=0).lookup("py:signed")) == 2, what="both announced")
        pinned = self.link(self.g3, lookup_cache=0)
        pinned.pin_service("py:signed", [key.public_hex])
        self.assertEqual(pinned.lookup("py:signed"), ["127.0.0.1:5101"])
        pinned.pin_service("py:signed", [grenache.Keypair.generate().public_hex])
        with self.assertRaises(grenache.LookupEmptyError):
            pinned.lookup("py:signed")
        with self.assertRaises(grenache.InvalidArgumentError):
            pinned.pin_service("py:signed", ["zz"])


if __name__ == "__main__":
    unittest.main()
