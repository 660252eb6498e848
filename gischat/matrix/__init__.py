"""The Matrix bridge: gischat rooms and Matrix rooms as one conversation (docs/matrix.md).

gischat is an application service of a homeserver: the homeserver pushes the portals' events to
`/_matrix/app/v1/` (`appservice`), and gischat acts in Matrix through virtual users of its own
namespace, one per gischat nickname (`puppets`), never with anyone's password. `outbound` carries
what gischat users say to Matrix, `inbound` what Matrix users say to gischat's rooms, `convert`
turns one into the other, and `bridge` puts them together for the app.
"""
