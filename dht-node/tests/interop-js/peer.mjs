// A js-libp2p peer that talks to Skywire DHT nodes through the standard kad-dht
// protocol (`/skywire-dht/kad/1.0.0`), as a JS tool would. Run by
// dht-node/tests/interop.rs:
//
//   node peer.mjs <bootstrap multiaddr with /p2p/> <target hex> <bogus target hex> [<item hex>]
//
// 1. dials the bootstrap node (tcp, noise, yamux; identify and ping as the nodes speak them)
// 2. finds the closest peers to <target>
// 3. GET_VALUE `/skywire-dht/item/` + target: prints `RECORD <hex of the value>`
// 4. PUT_VALUE garbage under `/skywire-dht/item/` + <bogus target>, and the real item
//    under that same (wrong) key: prints `PUT_GARBAGE <peers>` and `PUT_MOVED <peers>`
// 5. with <item hex>: PUT_VALUE that item under its own key: prints `PUT_ITEM <peers>`
// 6. prints `DONE` and exits 0; any failure exits 1, and the whole run times out on
//    its own after 30 s.
//
// The JS side accepts any record under the `skywire-dht` namespace: the Rust side
// validates what it reads and what it is sent.

import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'

// Node 20 lacks Promise.withResolvers (Node 22+), which js-libp2p's dependencies use.
Promise.withResolvers ??= function withResolvers () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

const TIMEOUT_MS = 30_000
const PREFIX = new TextEncoder().encode('/skywire-dht/item/')

const fail = (msg) => {
  console.error(`FAIL ${msg}`)
  process.exit(1)
}
const timer = setTimeout(() => fail(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS)

const hexToBytes = (hex) => {
  if (!/^([0-9a-fA-F]{2})*$/.test(hex)) fail(`not hex: ${hex}`)
  return Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16))
}
const bytesToHex = (bytes) => Buffer.from(bytes).toString('hex')
const recordKey = (target) => {
  if (target.length !== 32) fail(`a target is 32 bytes, got ${target.length}`)
  const key = new Uint8Array(PREFIX.length + 32)
  key.set(PREFIX)
  key.set(target, PREFIX.length)
  return key
}

const [bootstrap, targetHex, bogusHex, itemHex] = process.argv.slice(2)
if (bootstrap == null || targetHex == null || bogusHex == null) {
  fail('usage: node peer.mjs <bootstrap multiaddr> <target hex> <bogus target hex> [<item hex>]')
}
const target = hexToBytes(targetHex)
const key = recordKey(target)
const bogusKey = recordKey(hexToBytes(bogusHex))

const node = await createLibp2p({
  addresses: { listen: [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/skywire-dht/kad/1.0.0',
      clientMode: true,
      // Keep loopback and private addresses (the default mapper drops them).
      peerInfoMapper: (peer) => peer,
      // Accept any record of this namespace: the Rust nodes validate items.
      validators: { 'skywire-dht': async () => {} },
      selectors: { 'skywire-dht': () => 0 }
    })
  }
})

node.addEventListener('peer:identify', (e) => {
  console.error(`identified ${e.detail.peerId}: ${e.detail.protocols.join(' ')}`)
})

const signal = AbortSignal.timeout(TIMEOUT_MS - 5_000)
const dht = node.services.dht

// Sends a PUT_VALUE and counts the peers that acknowledged it.
const put = async (k, value) => {
  let acked = 0
  for await (const event of dht.put(k, value, { signal })) {
    if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') acked++
  }
  return acked
}

try {
  const conn = await node.dial(multiaddr(bootstrap), { signal })
  console.error(`dialed ${conn.remotePeer}`)

  // Wait for identify to put the node in the routing table, then look up peers.
  const closest = new Set()
  for (let attempt = 0; closest.size === 0 && attempt < 50; attempt++) {
    try {
      for await (const event of dht.getClosestPeers(target, { signal })) {
        if (event.name === 'FINAL_PEER') closest.add(event.peer.id.toString())
      }
    } catch (e) {
      if (signal.aborted) throw e
    }
    if (closest.size === 0) await new Promise((resolve) => setTimeout(resolve, 200))
  }
  console.log(`CLOSEST ${closest.size}`)
  if (closest.size === 0) fail('no closest peers found')

  let value = null
  for await (const event of dht.get(key, { signal })) {
    if (event.name === 'VALUE') {
      value = event.value
      break
    }
  }
  if (value == null) fail('GET_VALUE found no record')
  console.log(`RECORD ${bytesToHex(value)}`)

  const garbage = new TextEncoder().encode('this is not a signed item')
  console.log(`PUT_GARBAGE ${await put(bogusKey, garbage)}`)
  console.log(`PUT_MOVED ${await put(bogusKey, value)}`)
  if (itemHex != null) {
    const item = hexToBytes(itemHex)
    console.log(`PUT_ITEM ${await put(key, item)}`)
  }
  console.log('DONE')
  clearTimeout(timer)
  await node.stop()
  process.exit(0)
} catch (e) {
  fail(e?.stack ?? String(e))
}
