// Package peer serves objects by hexdigest over HTTP and fetches them from
// other nodes, so that a node rebuilding its data can read from the
// replicas that hold the same files as well as from object storage.
//
// The protocol (version 1), every request with "Authorization: Bearer
// TOKEN" when the server has a token:
//
//	GET  /v1/health                 {"status":"ok","node":...,"objects":N}
//	POST /v1/has                    {"hexdigests":[...]} (at most 100,000)
//	                                -> {"have":[{"hexdigest":...,"size":N},...]}
//	GET  /v1/objects/HEXDIGEST      the content; Range supported;
//	                                X-Deltabackup-Hexdigest, X-Deltabackup-Size
//	POST /v1/objects                {"hexdigests":[...]} (at most 1,000, each
//	                                at most 1 MiB) -> a frame stream, below
//
// A frame stream starts with "DBP1", then one frame per requested
// hexdigest, in request order: the 32-byte digest, a status byte (0: the
// content follows, 1: not available), and for status 0 the size (uint64,
// big endian) and that many bytes. Anything else is 404 (unknown objects,
// paths, listings) or 400. Clients verify every byte they receive; a
// server stops a transfer rather than finish it with bytes that do not
// hash to the digest.
package peer
