// Package session is the native side of the plakar:storage world: what the
// host lends the OCI store guest (HTTP round trips to the registry, byte
// streams, a shared cache and a logger), as an abi.Host.
//
// An Env holds what every call of one store shares: the registry, the HTTP
// client, the allow-list, the logger and the cache. A Session lives for one
// export call and owns the streams the guest sees during it; the host ends it
// with CloseAll when the call returns, after taking the stream that
// store.get hands back, if any.
//
// Payload bytes never cross into the guest: request and response bodies are
// streams held here, hashed as they flow, so that the guest can learn the
// digest of what it uploaded and have downloads verified without copying
// them.
package session
