// The /about status page: refresh the connected counts every 10 s.
async function refresh() {
  try {
    const response = await fetch("status", {cache: "no-store"});
    const status = await response.json();
    for (const room of status.rooms) {
      const cell = document.querySelector(`td.count[data-room="${CSS.escape(room.name)}"]`);
      if (cell) cell.textContent = room.nb_connected_users;
    }
  } catch (error) { /* keep the last counts */ }
}
setInterval(refresh, 10000);

