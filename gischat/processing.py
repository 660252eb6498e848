"""INTERIM STUB written by the lead so the app imports; helper B replaces this whole file.

Same interface as the real module: heavy work in a thread pool for now.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gischat import models
from gischat.images import ImageRejected, process_image
from gischat.settings import Settings

OFFLOAD_THRESHOLD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Prepared:
    kind: str
    author: str
    wire: str


class Processor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = models.Limits.from_settings(settings)
        self.pool = ThreadPoolExecutor(max_workers=settings.processing_workers)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def process_frame(self, text: str) -> models.ClientMessage | Prepared:
        message = models.parse_frame(text, self.limits)
        if isinstance(message, models.ImageMessage | models.GeojsonMessage):
            return await self.process_message(message)
        return message

    async def process_message(self, message: models.ImageMessage | models.GeojsonMessage) -> Prepared:
        if isinstance(message, models.GeojsonMessage):
            for index, feature in enumerate(message.features):
                models.check_feature(index, feature)
            return Prepared("geojson", message.author, message.to_wire())
        job = functools.partial(
            process_image,
            message.image_data,
            max_size=self.settings.max_image_size,
            max_pixels=self.settings.max_image_pixels,
        )
        try:
            data = await asyncio.get_running_loop().run_in_executor(self.pool, job)
        except ImageRejected as exc:
            raise models.Uncompliant(str(exc)) from None
        resized = message.model_copy(update={"image_data": data})
        return Prepared("image", message.author, resized.to_wire())
